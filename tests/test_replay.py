"""Replayed distillation targets (``--distill-targets replay``, fer_edge.training.replay)."""
from __future__ import annotations

import pytest
import torch

from fer_edge.checkpoint import load_checkpoint
from fer_edge.errors import TrainingError
from fer_edge.training import TrainConfig, train
from fer_edge.training.augment import PRESETS
from fer_edge.training.replay import ReplayTargets, cache_key, load_cache, make_views, save_cache


def _cfg(data, out, **kw):
    base = dict(data=str(data), model="simple_cnn", out=str(out), epochs=1, batch_size=32, lr=3e-3, seed=0,
                device="cpu", augment="light", max_steps_per_epoch=3, amp="off")
    base.update(kw)
    return TrainConfig(**base)


def test_views_are_seeded_augmented_uint8_copies_and_leave_the_callers_rng_alone():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 48, 48), dtype=torch.uint8)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    views = make_views(images, PRESETS["standard"], views=3, seed=7, batch_size=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert views.shape == (3, 20, 48, 48) and views.dtype == torch.uint8
    assert torch.equal(views, make_views(images, PRESETS["standard"], views=3, seed=7, batch_size=8))
    assert not torch.equal(views, make_views(images, PRESETS["standard"], views=3, seed=8))
    assert not torch.equal(views[0], views[1])  # each view its own augmentation
    assert not torch.equal(views[0], images)
    with pytest.raises(TrainingError, match="at least 1"):
        make_views(images, PRESETS["standard"], views=0, seed=7)


def test_a_replayed_batch_pairs_each_view_with_its_own_targets():
    k, n = 4, 50
    views = torch.arange(k, dtype=torch.uint8).view(k, 1, 1, 1).expand(k, n, 48, 48).clone() * 60
    views[:, :, 0, 0] = torch.arange(n, dtype=torch.uint8)  # pixel (0, 0) says which image it is
    probs = torch.zeros(k, n, 7)
    probs[torch.arange(k), :, torch.arange(k)] = 1.0  # view v's target is class v
    rt = ReplayTargets(views, probs)
    torch.manual_seed(0)
    idx = torch.tensor([3, 17, 3, 42, 0, 9, 9, 31])
    x, t = rt.batch(idx)
    assert x.shape == (8, 1, 48, 48) and t.shape == (8, 7)
    view_of = (x[:, 0, 1, 1] * 255).round().long() // 60
    assert torch.equal(t.argmax(1), view_of)  # the target is the one for the view the student sees
    assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), idx)  # and the view is of the asked image
    seen = {int(v) for _ in range(20) for v in rt.batch(idx)[1].argmax(1)}
    assert seen == set(range(k))


def test_replay_trains_labels_once_and_reuses_a_matching_cache(synthetic_csv, tmp_path, capsys):
    teacher = str(train(_cfg(synthetic_csv, tmp_path / "teacher", max_steps_per_epoch=3), progress=False)
                  .out_dir / "best.pt")
    cache = tmp_path / "targets.pt"
    opts = dict(distill=[teacher], distill_tta=True, distill_alpha=0.9, teacher_runtime="torch",
                distill_targets="replay", distill_views=2, distill_cache=str(cache))
    first = train(_cfg(synthetic_csv, tmp_path / "a", **opts), progress=False)
    said = " ".join(capsys.readouterr().err.split())
    assert "the teacher(s) saw 2 --augment light views and its mirror image of each" in said
    assert first.teacher_targets_seconds is not None and cache.is_file()
    ck = load_checkpoint(first.out_dir / "last.pt")
    assert ck.train_config["distill_targets"] == "replay" and ck.train_config["distill_views"] == 2

    # the cache holds exactly the teacher's answers for its stored views
    from fer_edge.training.teachers import load_teachers, teacher_probs

    raw = torch.load(cache, weights_only=True)
    t = load_teachers([teacher], list(ck.labels), torch.device("cpu"), "torch")
    want = teacher_probs(t, raw["views"][1].unsqueeze(1).float() / 255.0, 4.0, tta=True)
    assert raw["probs"].shape[:2] == raw["views"].shape[:2] == (2, len(raw["views"][0]))
    assert torch.allclose(raw["probs"][1], want, atol=1e-5)

    # a second run with the same settings loads the cache and trains to the same weights
    second = train(_cfg(synthetic_csv, tmp_path / "b", **opts), progress=False)
    assert "loaded from" in " ".join(capsys.readouterr().err.split())
    w1, w2 = ck.state_dict, load_checkpoint(second.out_dir / "last.pt").state_dict
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    # other settings: refused, naming what differs, and the cache is left as it was
    stamp = cache.stat().st_mtime_ns
    with pytest.raises(TrainingError, match=r"made for other settings: views 2 \(this run: 3\); seed 0 \(this run: 1\)"):
        train(_cfg(synthetic_csv, tmp_path / "c", seed=1, **{**opts, "distill_views": 3}), progress=False)
    other = str(tmp_path / "teacher" / "last.pt")  # another file: a teacher given twice is refused
    with pytest.raises(TrainingError, match="teachers differ"):
        train(_cfg(synthetic_csv, tmp_path / "d", **{**opts, "distill": [teacher, other]}), progress=False)
    assert cache.stat().st_mtime_ns == stamp
    (tmp_path / "junk.pt").write_text("not a cache")
    with pytest.raises(TrainingError, match="not a readable replay cache"):
        train(_cfg(synthetic_csv, tmp_path / "e", **{**opts, "distill_cache": str(tmp_path / "junk.pt")}),
              progress=False)


def test_replay_without_a_cache_and_with_mixing(synthetic_csv, tmp_path):
    teacher = str(train(_cfg(synthetic_csv, tmp_path / "teacher"), progress=False).out_dir / "best.pt")
    res = train(_cfg(synthetic_csv, tmp_path / "mix", distill=[teacher], distill_targets="replay", cutmix=1.0,
                     mixup=0.4), progress=False)
    assert res.history[-1]["train_loss"] > 0
    assert load_checkpoint(res.out_dir / "last.pt").train_config["distill_views"] == 8  # the default, recorded


@pytest.mark.parametrize("bad, msg", [
    (dict(distill_targets="replay"), "needs at least one --distill teacher"),
    (dict(distill_targets="replay", augment="none", distill=["T"]), "use --distill-targets offline"),
    (dict(distill_views=4, distill=["T"]), "--distill-views applies to --distill-targets replay only"),
    (dict(distill_views=0, distill=["T"], distill_targets="replay"), "--distill-views must be at least 1"),
    (dict(distill_cache="c.pt", distill=["T"], distill_targets="offline"), "--distill-cache applies to"),
])
def test_replay_options_are_checked(bad, msg, tmp_path):
    with pytest.raises(TrainingError, match=msg):
        train(_cfg(tmp_path / "d.csv", tmp_path / "x", **bad), progress=False)


def test_cache_refuses_a_file_of_another_format_or_shape(tmp_path):
    images = torch.zeros(4, 48, 48, dtype=torch.uint8)
    key = cache_key(teachers=[], images_u8=images, augment="light", aug=PRESETS["light"], views=2, seed=0,
                    temperature=4.0, tta=False, precision="float32")
    assert load_cache(tmp_path / "none.pt", key, torch.device("cpu")) is None
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(TrainingError, match="not a fer-edge replay cache"):
        load_cache(tmp_path / "other.pt", key, torch.device("cpu"))
    save_cache(tmp_path / "bad.pt", key, ReplayTargets(torch.zeros(2, 4, 48, 48, dtype=torch.uint8),
                                                       torch.zeros(3, 4, 7)))
    with pytest.raises(TrainingError, match="do not fit together"):
        load_cache(tmp_path / "bad.pt", key, torch.device("cpu"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_views_that_would_not_fit_in_memory_are_refused_before_allocating(monkeypatch):
    import psutil

    from fer_edge.training import replay

    images = torch.zeros(10, 48, 48, dtype=torch.uint8)
    with pytest.raises(TrainingError) as e:  # 1e9 views: ~21,000 GiB, not a RuntimeError from torch.empty
        make_views(images, PRESETS["light"], views=10**9, seed=0)
    msg = str(e.value)
    assert msg.startswith("--distill-views 1000000000: ") and "GiB" in msg and "available" in msg
    assert "lower --distill-views" in msg

    class Mem:  # 1 MiB free: 3 views of 10 images (23,040 + 280 bytes each) fit, 100 do not
        available = 2**20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem)
    assert make_views(images, PRESETS["light"], views=3, seed=0).shape == (3, 10, 48, 48)
    assert replay.replay_nbytes(3, images) == (3 * 10 * 48 * 48, 3 * 10 * 7 * 4)
    with pytest.raises(TrainingError, match=r"--distill-views 100: .* only 1\.0 MiB of memory is available: "
                                            r"lower --distill-views \(about 44 fit now\)"):
        make_views(images, PRESETS["light"], views=100, seed=0)


def test_a_truncated_cache_says_to_delete_it_or_choose_another_path(tmp_path):
    images = torch.zeros(4, 48, 48, dtype=torch.uint8)
    key = cache_key(teachers=[], images_u8=images, augment="light", aug=PRESETS["light"], views=2, seed=0,
                    temperature=4.0, tta=False, precision="float32")
    path = tmp_path / "cache.pt"
    save_cache(path, key, ReplayTargets(torch.zeros(2, 4, 48, 48, dtype=torch.uint8), torch.zeros(2, 4, 7)))
    path.write_bytes(path.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(TrainingError, match=r"not a readable replay cache \(.*\); delete it or choose another path"):
        load_cache(path, key, torch.device("cpu"))
