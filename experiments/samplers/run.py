"""The sampler comparison at toy scale, one command (experiments/samplers/README.md).

    python experiments/samplers/run.py                                   # the study, ~40 min on 2 cores
    python experiments/samplers/run.py out=outputs/samplers_quick seeds=[0] num_videos=2 num_clips=10 \
        memory_lengths=[1] finetune_steps=20                              # a smoke run, ~3 min

Overrides are `key=value` for the fields of `svi.toy.samplers.ComparisonConfig` (typed: a misspelt key or
a wrong type fails before anything runs).
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from svi.toy.samplers import ComparisonConfig, run


def main(argv: list[str]) -> None:
    cfg = OmegaConf.merge(OmegaConf.structured(ComparisonConfig), OmegaConf.from_dotlist(argv))
    run(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main(sys.argv[1:])
