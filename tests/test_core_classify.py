"""The zero-shot diffusion classifier (core.classify): shared (t, eps) pairs, adaptive rounds, the ranking against the
known posterior of a Gaussian toy, the budget, and the calibration error."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from diffsuite.core.analytic import ExactGMMNet, GaussianMixture
from diffsuite.core.classify import classify, default_rounds, expected_calibration_error, stratified_t
from diffsuite.core.denoiser import Denoiser
from diffsuite.core.schedules import make_schedule

SCH = make_schedule("linear", 100, beta_start=1e-3, beta_end=0.2)
MEANS = [[-1.0, 0.0], [1.0, 0.3], [0.0, 1.5]]
COVS = [[0.4, 0.3], [0.3, 0.5], [0.5, 0.2]]


def _classes():
    """Three classes, each a Gaussian; the class-conditional exact denoiser and the Bayes posterior p(c | x)."""
    comps = {c: GaussianMixture([MEANS[c]], [COVS[c]]) for c in range(3)}
    mix = GaussianMixture(MEANS, COVS)
    den = Denoiser(ExactGMMNet(mix, SCH, cond_gmms=comps), SCH)
    return den, mix


class _Blind(torch.nn.Module):
    """A conditional network that ignores its condition: every candidate must get the very same error."""

    def forward(self, x, t, cond=None):
        return torch.tanh(x) * 0.5


def test_every_candidate_is_scored_on_the_same_pairs():
    den = Denoiser(_Blind(), SCH)
    r = classify(den, torch.randn(6, 2), torch.arange(4), rounds=[(5, None)], generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.errors, r.errors[:, :1].expand_as(r.errors))
    assert torch.equal(r.trials, torch.full((6, 4), 5)) and torch.equal(r.nfe, torch.full((6,), 20))


def test_rounds_eliminate_candidates_and_count_evaluations():
    den, mix = _classes()
    x = mix.sample(8, torch.Generator().manual_seed(1)).float()
    r = classify(den, x, torch.arange(3), rounds=[(4, 1), (6, None)], generator=torch.Generator().manual_seed(0))
    assert torch.equal((r.trials == 10).sum(1), torch.ones(8, dtype=torch.long))  # one survivor per input
    assert torch.equal(r.nfe, torch.full((8,), 3 * 4 + 6))
    assert torch.equal(r.alive.sum(1), torch.ones(8, dtype=torch.long)) and torch.isfinite(r.errors).all()
    assert torch.equal(r.top1, torch.where(r.alive, r.errors, torch.full_like(r.errors, math.inf)).argmin(1))
    assert r.probabilities().sum(1).allclose(torch.ones(8))


@pytest.mark.parametrize("K, budget", [(10, 20), (10, 5), (3, 7), (2, 1), (1, 4)])
def test_default_rounds_keep_to_the_budget(K, budget):
    rounds = default_rounds(K, budget)
    spent, alive = 0, K
    for n, keep in rounds:
        spent += n * alive
        alive = keep or alive
    assert spent <= budget * K and spent >= 0.8 * budget * K - K


def test_stratified_t_has_one_timestep_per_stratum():
    t = stratified_t(10, 100, 3, torch.Generator().manual_seed(0))
    assert torch.equal((t // 10).long(), torch.arange(10)[:, None].expand(10, 3))


def test_the_ranking_follows_the_known_posterior():
    """Inputs drawn from the three classes: the diffusion classifier's top-1 agrees with the Bayes classifier on the
    inputs the posterior is sure about (p >= 0.9), and its accuracy is within 0.06 of the Bayes accuracy."""
    den, mix = _classes()
    x, y = mix.sample(300, torch.Generator().manual_seed(2), return_labels=True)
    post = torch.stack([GaussianMixture([MEANS[c]], [COVS[c]]).log_prob(x) for c in range(3)], 1).softmax(1)
    r = classify(den, x.float(), torch.arange(3), budget=60, generator=torch.Generator().manual_seed(0))
    sure = post.max(1).values >= 0.9
    agree = (r.top1[sure] == post.argmax(1)[sure]).float().mean()
    bayes = (post.argmax(1) == y).float().mean()
    ours = (r.top1 == y).float().mean()
    assert agree >= 0.97, float(agree)
    assert ours >= bayes - 0.06, (float(ours), float(bayes))


def test_expected_calibration_error():
    labels = torch.tensor([0, 1, 0, 1])
    assert expected_calibration_error(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), labels) == 0
    # always 0.9 sure of class 0, right half of the time: |0.5 - 0.9| = 0.4
    p = torch.tensor([[0.9, 0.1]] * 4)
    assert math.isclose(expected_calibration_error(p, labels), 0.4, abs_tol=1e-6)


def test_the_classify_command_on_a_split_a_file_and_bad_input(tmp_path, monkeypatch, capsys):
    import json
    from PIL import Image
    from diffsuite.recipes import cli, run
    from tiny import recipe
    monkeypatch.setenv("DIFFSUITE_CACHE", str(tmp_path / "cache"))
    out = run.train(recipe("image", tmp_path, steps=2), out_dir=tmp_path / "run")
    assert cli.main(["classify", str(out), "--input", "test", "--n", "6", "--budget", "2", "--out",
                     str(tmp_path / "c")]) == 0
    res = json.loads((tmp_path / "c" / "classify.json").read_text())
    assert res["n"] == 6 and 0 <= res["accuracy"] <= 1 and len(res["confusion"]) == 10
    assert sum(map(sum, res["confusion"])) == 6 and (tmp_path / "c" / "confusion.png").is_file()
    assert res["nfe_per_candidate"] <= 2
    img = tmp_path / "seven.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16)) * 255).astype("uint8")).save(img)
    assert cli.main(["classify", str(out), "--input", str(img), "--budget", "2", "--out", str(tmp_path / "f")]) == 0
    ranking = json.loads((tmp_path / "f" / "classify.json").read_text())["ranking"]
    assert sorted(r["candidate"] for r in ranking) == [str(i) for i in range(10)]
    assert abs(sum(r["probability"] for r in ranking) - 1) < 1e-5
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    capsys.readouterr()
    assert cli.main(["classify", str(out), "--input", str(bad)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("diffsuite: error:")]
    assert len(errors) == 1 and "bad.png" in errors[0] and "Traceback" not in err
    toy = run.train(recipe("toy2d", tmp_path, steps=2), out_dir=tmp_path / "toy")
    assert cli.main(["classify", str(toy), "--input", "test"]) == 2
    assert "does not support classify" in capsys.readouterr().err


def test_per_input_candidates_and_several_conditions_per_class():
    """Per-input candidates (B, K, ...) rank as shared ones when every input has the same; a class standing for several
    conditions takes its likeliest one."""
    from diffsuite.core.classify import Candidates
    den, mix = _classes()
    x = mix.sample(12, torch.Generator().manual_seed(3)).float()
    shared = classify(den, x, torch.arange(3), budget=6, generator=torch.Generator().manual_seed(0))
    own = classify(den, x, torch.arange(3).expand(12, 3), budget=6, generator=torch.Generator().manual_seed(0),
                   per_input=True)
    assert torch.equal(shared.errors, own.errors) and torch.equal(shared.top1, own.top1)
    # conditions 0, 1, 2, 0 again, but the class list groups {0, 1} as class "a" and {2} as class "b"
    c = Candidates(x, torch.tensor([0, 1, 2, 0]), ["a", "b"], class_of=torch.tensor([0, 0, 1, 0]))
    r = classify(den, x, c.conditions, rounds=[(8, None)], generator=torch.Generator().manual_seed(0))
    ce = c.class_errors(r.errors)
    torch.testing.assert_close(ce[:, 0], r.errors[:, [0, 1, 3]].min(1).values)
    torch.testing.assert_close(ce[:, 1], r.errors[:, 2])
    assert torch.equal(c.predict(r), torch.tensor([0, 0, 1, 0])[r.top1])
    assert torch.equal(c.first(5).x, x[:5])
    with pytest.raises(ValueError, match="class_of"):
        Candidates(x, torch.arange(3), ["a", "b"], class_of=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="per-input candidates"):
        Candidates(x, torch.zeros(5, 3), ["a", "b", "c"], per_input=True)
