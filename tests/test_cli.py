"""``taichi-dr``: every user mistake is one line on stderr and exit 2, before any work starts;
--config / config.json / --resume; Ctrl-C -> 130; a NaN loss stops with a checkpoint."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from taichi_dr.cli import build_parser, main
from taichi_dr.mesh import Mesh, save_obj
from taichi_dr.recon import ReconConfig
from taichi_dr.recon.demo import make_demo_dataset

TINY = ["--iters", "3", "--refine-iters", "1", "--grid-res", "8", "--batch", "1", "--turntable-frames", "2",
        "--turntable-res", "16", "--chamfer-samples", "500"]
# these tests are about the command line, not appearance: per-vertex colours compile and run fastest
# cheapest appearance model: the CLI behaviour under test does not depend on it
FAST = ["--material", "vertex", "--light", "simple"]
TINY += FAST


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tinyds"))
    make_demo_dataset(root, res=24, n_train=4, n_test=2, gt_res=24)
    return root


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cube") / "cube.obj")
    v = torch.tensor([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=torch.float32)
    f = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=torch.int32)
    save_obj(path, Mesh(v, f))
    return path


def cli(argv, capsys):
    """Run ``taichi-dr argv`` in-process: (exit status, stdout, stderr)."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line, no traceback, no usage block
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_bad_invocations_one_line_exit_2(ds, cube, tmp_path, capsys):
    out = str(tmp_path / "out")
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    nan_obj = tmp_path / "nan.obj"
    nan_obj.write_text("v 0 0 0\nv 1 nan 0\nv 0 1 0\nf 1 2 3\n")
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text(json.dumps({"batch": 0}))
    typed_cfg = tmp_path / "typed.json"
    typed_cfg.write_text(json.dumps({"grid_res": "8"}))
    unknown_cfg = tmp_path / "unknown.json"
    unknown_cfg.write_text(json.dumps({"gird_res": 8}))
    cases = [
        (["reconstruct", str(tmp_path / "missing_dir"), "--out", out], ["missing_dir: no such folder",
                                                                        "transforms_train.json"]),
        (["reconstruct", str(afile), "--out", out], ["afile.txt: is a file", "expected"]),
        (["render", str(tmp_path / "missing.obj"), "--out", str(tmp_path / "x.png")], ["missing.obj: no such file"]),
        (["render", str(nan_obj), "--out", str(tmp_path / "x.png")], ["nan.obj:2", "NaN"]),
        (["reconstruct", ds, "--out", out, "--grid-res", "0"], ["--grid-res", ">= 1", "'0'"]),
        (["render", cube, "--out", str(tmp_path / "x.png"), "--res", "0"], ["--res", "positive", "'0'"]),
        (["bench", "nonsense"], ["nonsense", "raster"]),
        (["reconstruct", ds, "--out", out, "--train-res", "0"], ["--train-res", ">= 1"]),
        (["reconstruct", ds, "--out", out, "--iters", "-5"], ["--iters", ">= 1", "'-5'"]),
        (["reconstruct", ds, "--out", out, "--batch", "0"], ["--batch", ">= 1"]),
        (["reconstruct", ds, "--out", out, "--lr-geometry", "nan"], ["--lr-geometry"]),
        (["reconstruct", ds, "--out", out, "--loss", "l3"], ["--loss", "logl1"]),
        (["reconstruct", ds, "--out", out, "--gt", str(tmp_path / "missing.obj")], ["missing.obj: no such file"]),
        (["reconstruct", ds, "--out", out, "--config", str(bad_cfg)], ["batch", ">= 1", "0"]),
        (["reconstruct", ds, "--out", out, "--config", str(unknown_cfg)], ["unknown setting", "gird_res"]),
        (["reconstruct", ds, "--out", out, "--config", str(typed_cfg)], ["typed.json", "grid_res", "expected int"]),
        (["reconstruct", ds, "--out", out, "--config", str(tmp_path / "none.json")], ["none.json", "no such"]),
        (["reconstruct", ds, "--out", out, "--resume"], ["checkpoint.pt", "no checkpoint"]),
        (["demo", "--out", out, "--grid-res", "x"], ["--grid-res", "'x'"]),
        (["gradcheck", "--op", "no_such_op"], ["no_such_op", "matches no op"]),
    ]
    for argv, needles in cases:
        rc, _, err = cli(argv, capsys)
        assert_one_line_error(rc, err, *needles)
        assert "path:" not in err
    assert not os.path.exists(out)  # nothing was started: --gt and the settings are checked first


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        main(["--debug", "reconstruct", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


def test_negative_view_angles_accepted(cube, tmp_path, capsys):
    out = tmp_path / "v.png"
    rc, stdout, err = cli(["render", cube, "--out", str(out), "--res", "16", "--view", "-30,-20"], capsys)
    assert rc == 0 and out.is_file(), err


def test_help_lists_every_config_field_with_its_default():
    text = build_parser()._subparsers._group_actions[0].choices["reconstruct"].format_help()
    for name, f in ReconConfig.__dataclass_fields__.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
    assert f"(default: {ReconConfig().iters})" in text and "refinement" in text  # --iters: the refinement follows
    assert "12-25 % more time" in " ".join(text.split())  # a "%" in a setting's help is text, not a format


def test_config_validate_names_the_field():
    assert ReconConfig().validate() == ReconConfig()
    for kw, needle in ((dict(iters=-5), "iters"), (dict(batch=0), "batch"), (dict(train_res=0), "train_res"),
                       (dict(loss="l3"), "loss"), (dict(lr_color=float("inf")), "lr_color")):
        with pytest.raises(ValueError, match=needle):
            ReconConfig(**kw).validate()
    with pytest.raises(TypeError, match="grid_res"):
        ReconConfig(grid_res=4.5).validate()


def test_library_checks_before_work(ds, tmp_path):
    from taichi_dr.recon import reconstruct

    out = tmp_path / "lib"
    with pytest.raises(ValueError, match="batch"):
        reconstruct(ds, str(out), ReconConfig(batch=0), progress=False)
    with pytest.raises(ValueError, match="missing.obj"):
        reconstruct(ds, str(out), ReconConfig(), gt_mesh=str(tmp_path / "missing.obj"), progress=False)
    with pytest.raises(TypeError, match="gt_mesh"):  # a path or a loaded Mesh
        reconstruct(ds, str(out), ReconConfig(), gt_mesh=42, progress=False)
    from taichi_dr.mesh import Mesh
    with pytest.raises(ValueError, match="gt_mesh.*0 faces"):
        reconstruct(ds, str(out), ReconConfig(), gt_mesh=Mesh(torch.zeros(3, 3), torch.zeros(0, 3, dtype=torch.int32)),
                    progress=False)
    assert not out.exists()


@pytest.mark.slow
def test_config_file_resolved_config_and_resume(ds, tmp_path, capsys):
    out = tmp_path / "run"
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"iters": 3, "grid_res": 8, "batch": 3, "turntable_frames": 2}))
    rc, stdout, err = cli(["reconstruct", ds, "--out", str(out), "--config", str(run_json), "--batch", "1",
                           "--refine-iters", "1", "--turntable-res", "16", "--chamfer-samples", "500",
                           "--gt", os.path.join(ds, "gt_mesh.obj")] + FAST, capsys)
    assert rc == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["iters"] == 3 and saved["grid_res"] == 8  # from --config
    assert saved["batch"] == 1  # the flag overrides the file
    assert saved["lr_geometry"] == ReconConfig().lr_geometry  # everything else: defaults, all written
    assert "test PSNR" in stdout and "outputs in" in stdout and "chamfer" in stdout.lower()
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 4

    # --resume takes the checkpoint's settings (grid 8, batch 1, ...) and only the flags given here
    rc, stdout, err = cli(["reconstruct", ds, "--out", str(out), "--resume", "--iters", "5"], capsys)
    assert rc == 0, err
    saved = json.loads((out / "config.json").read_text())
    assert saved["iters"] == 5 and saved["grid_res"] == 8 and saved["batch"] == 1 and saved["turntable_res"] == 16
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 6
    # a setting that fixes the model's shape cannot change on resume
    rc, _, err = cli(["reconstruct", ds, "--out", str(out), "--resume", "--grid-res", "10"], capsys)
    assert_one_line_error(rc, err, "grid_res", "resume", "8", "10")


@pytest.mark.slow
def test_nan_loss_stops_with_a_checkpoint_of_the_last_good_state(ds, tmp_path, capsys, monkeypatch):
    from taichi_dr.recon import loop

    calls = {"n": 0}
    real = loop.image_loss

    def poisoned(*a, **k):
        calls["n"] += 1
        value = real(*a, **k)
        return value * float("nan") if calls["n"] == 3 else value
    monkeypatch.setattr(loop, "image_loss", poisoned)
    out = tmp_path / "nan"
    rc, _, err = cli(["reconstruct", ds, "--out", str(out)] + TINY, capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "iteration 2" in last and "nan" in last and "checkpoint.pt" in last and "--resume" in last
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["it"] == 2  # the two good steps, not the poisoned one
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v) and v.is_floating_point())
    assert not (out / "metrics.json").exists()


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(ds, tmp_path):
    out = tmp_path / "sigint"
    cmd = [sys.executable, "-m", "taichi_dr.cli", "reconstruct", ds, "--out", str(out), "--iters", "100000",
           "--grid-res", "8", "--batch", "1", "--refine-iters", "0", "--checkpoint-every", "1"] + FAST
    # PYTHONFAULTHANDLER: should it ever hang, SIGABRT makes the child print every thread's stack
    env = dict(os.environ, TAICHI_DR_ARCH="cpu", PYTHONFAULTHANDLER="1")
    # a shell's background job (`pytest ... &`, nohup) ignores SIGINT and children inherit that;
    # restore the default so the child's Python installs its Ctrl-C handler as in a terminal
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.time()
        while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() - t0 < 300:
            time.sleep(0.2)  # training has started once the first checkpoint exists
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            stdout, stderr = proc.communicate(timeout=60)
            pytest.fail("no exit within 120 s of Ctrl-C; the child's stacks:\n" + stderr[-6000:])
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "checkpoint saved" in stdout and "--resume" in stdout
    assert torch.load(out / "checkpoint.pt", weights_only=False)["it"] >= 1


@pytest.fixture
def default_ctrl_c():
    """Python's own SIGINT handler (KeyboardInterrupt) during the test, whatever the runner inherited: a
    shell starting pytest in the background ignores SIGINT, and the loop rightly keeps a host's choice."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved)


def _after_optimizer_step(monkeypatch, it: int, action) -> None:
    """Call ``action()`` right after the optimiser step of training step ``it`` (mid-step)."""
    from taichi_dr.recon import loop

    real_adam, real_run = torch.optim.Adam.step, loop._Run.step
    now = {"it": None}

    def run_step(self):
        now["it"] = self.it
        try:
            return real_run(self)
        finally:
            now["it"] = None

    def adam_step(self, *a, **k):
        out = real_adam(self, *a, **k)
        if now["it"] == it:
            action()
        return out
    monkeypatch.setattr(torch.optim.Adam, "step", adam_step)
    monkeypatch.setattr(loop._Run, "step", run_step)


@pytest.mark.slow
def test_ctrl_c_mid_step_finishes_the_step_then_stops(ds, tmp_path, capsys, monkeypatch, default_ctrl_c):
    """The signal lands inside a step (here right after the optimiser step, before the iteration count
    advances): the step is finished and the checkpoint holds it whole, so a resumed run repeats no step."""
    # Python runs the handler before the next bytecode: between the optimiser step and `it += 1`.
    # raise_signal delivers it to this thread before it returns (os.kill(getpid()) may pick another)
    _after_optimizer_step(monkeypatch, 2, lambda: signal.raise_signal(signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "midstep"
    rc, stdout, err = cli(["reconstruct", ds, "--out", str(out), "--checkpoint-every", "100"] + TINY, capsys)
    assert rc == 130
    assert "interrupted at iteration 3: checkpoint saved" in stdout and "--resume" in stdout
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["it"] == 3 and len(state["history"]["total"]) == 3 and state["history"]["iter"] == [0, 1, 2]
    assert not (out / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the loop puts the caller's handler back


@pytest.mark.slow
def test_an_interrupt_that_cuts_the_update_keeps_the_last_checkpoint(ds, tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt raised inside the optimiser step (a second Ctrl-C, or a host's own handler)
    leaves the parameters half-way between two steps: that state is not saved over the last checkpoint."""
    def interrupt():
        raise KeyboardInterrupt
    _after_optimizer_step(monkeypatch, 2, interrupt)
    out = tmp_path / "cut"
    rc, stdout, _ = cli(["reconstruct", ds, "--out", str(out), "--checkpoint-every", "1"] + TINY, capsys)
    assert rc == 130
    assert "interrupted during iteration 2:" in stdout and "kept (iteration 2)" in stdout and "--resume" in stdout
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["it"] == 2 and state["history"]["iter"] == [0, 1]


def test_a_second_ctrl_c_stops_at_once():
    from taichi_dr.recon.loop import _StopRequest

    stop = _StopRequest()
    stop(signal.SIGTERM, None)  # a scheduler's SIGTERM: a request, however often it comes
    stop(signal.SIGTERM, None)
    assert stop.signal == signal.SIGTERM and not stop.forced
    with pytest.raises(KeyboardInterrupt):
        stop(signal.SIGINT, None)  # Ctrl-C after a request: now
    assert stop.forced


@pytest.mark.slow
def test_a_lost_torchrun_peer_stops_with_one_line_and_a_checkpoint(ds, tmp_path, capsys, monkeypatch):
    """The all-reduce losing its peers (a rank died) is reported by the loop itself, with a checkpoint,
    before torchrun's SIGTERM could end the process silently; the CLI exits 1 without a traceback."""
    from taichi_dr.recon import loop
    from taichi_dr.recon.data_parallel import PeerLostError

    real = loop._Run.step

    def step(self):
        if self.it == 3:
            raise PeerLostError("rank 0/2: lost the other ranks in the gradient all-reduce (test)")
        return real(self)
    monkeypatch.setattr(loop._Run, "step", step)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "lost"
    rc, _, err = cli(["reconstruct", ds, "--out", str(out)] + TINY, capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "lost the other ranks" in last and "checkpoint.pt" in last and "--resume" in last
    assert "Traceback" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["it"] == 3
    assert signal.getsignal(signal.SIGTERM) is before  # the process' handler is put back
    assert not (out / "metrics.json").exists()
