"""How the synthetic benchmark uses each method: the paper's number of native steps, labelled reuses of a trained
run, longer training where the default budget leaves a method under-trained, under-budget rows never ranked."""

from __future__ import annotations

import torch

from evaluation.synthetic import benchmark
from wrc.upsamplers import create_upsampler
from wrc.upsamplers.base import resize


def test_native_steps_cap_the_chain_and_interpolate_the_rest():
    lift = create_upsampler("lift", 24, 8).eval()
    features, image = torch.randn(1, 24, 4, 5), torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        one_step = lift.upsample_step(features, image)
        lift.native_steps = 1
        capped = lift(features, image, output_size=(32, 40))
        lift.native_steps = None
        chained = lift(features, image, output_size=(32, 40))
    torch.testing.assert_close(capped, resize(one_step, (32, 40)))
    assert not torch.allclose(capped, chained)  # three chained steps are another use


def test_rows_say_how_a_method_is_used_and_which_are_ranked():
    args = benchmark.parse_args([])
    assert benchmark.training_steps("lift", args) == 1000 and benchmark.training_steps("wrc", args) == args.steps
    assert benchmark.row_label("wrc", args) == ("wrc", True)
    assert benchmark.row_label("lift_2steps", args) == ("lift_2steps (two chained steps: LiFT Table 8)", True)
    label, ranked = benchmark.row_label("lift_3steps", args)
    assert "outside the paper's regime" in label and not ranked
    label, ranked = benchmark.row_label("featup_implicit", args)
    assert label == "featup_implicit (under budget: 30 of 1200 steps)" and not ranked
    assert benchmark.row_label("featup_implicit", benchmark.parse_args(["--implicit-steps", "1200"]))[1]
    label, ranked = benchmark.row_label("loftup", args)  # its stage 1 is one epoch of SA-1B-1M: 125k steps
    assert label == "loftup (under budget: 200 of 125000 steps)" and not ranked
    assert not benchmark.row_label("loftup", benchmark.parse_args(["--steps", "124999"]))[1]
    assert benchmark.row_label("loftup", benchmark.parse_args(["--steps", "125000"])) == ("loftup", True)
    label, ranked = benchmark.row_label("loftup_2stages", args)  # its stage 2 is one epoch too
    assert label == "loftup_2stages (under budget: 200 of 125000 steps)" and not ranked
    assert benchmark.row_label("uplift", args) == ("uplift", True)  # trained with its own recipe (OWN_RECIPE)
    assert {"lift_2steps", "lift_3steps"} <= set(args.methods)
