"""Sample text from a trained LSTM language model.

    python generate.py run=logs/lstm/runs/<date_time> prompt="The history of" max_tokens=50 \
        temperature=0.8 top_k=40 seed=1

Prints the prompt followed by the continuation. The tokenizer is the run's (``word``: prompt words
outside the vocabulary become ``<unk>``, said once; ``gpt2``); the same seed gives the same text.
From Python: :class:`lightning_modules.generation.TextGenerator`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from lightning_modules.generation import Generation, TextGenerator
from lmvit.cli import ErrorPolicy, quiet_libraries
from lmvit.config import validate
from lmvit.errors import ConfigError
from lmvit.runs import run_config, run_dir


def generate(cfg: DictConfig) -> Generation:
    if OmegaConf.is_missing(cfg, "run"):
        raise ConfigError(
            "Missing setting run: pass a language model's run directory, e.g. "
            'python generate.py run=logs/lstm/runs/<date_time> prompt="The history of"'
        )
    if cfg.device not in ("cpu", "cuda") and not str(cfg.device).startswith("cuda:"):
        raise ConfigError(f"Invalid setting device={cfg.device!r}: must be cpu or cuda.")
    data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None
    run = run_dir(cfg.run)
    sections = ["task", "model", "data"]  # what generation uses, checked as train.py checks it
    validate(OmegaConf.masked_copy(run_config(run, data=data), sections),
             reference=OmegaConf.masked_copy(run_config(run), sections))  # fmt: skip
    generator = TextGenerator.from_run(cfg.run, cfg.ckpt, data=data, map_location=str(cfg.device))
    result = generator.generate(
        str(cfg.prompt), max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed
    )
    sep = "" if generator.tokenizer.name == "gpt2" or not cfg.prompt else " "
    print(f"{cfg.prompt}{sep}{result.text}")
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    with ErrorPolicy():
        generate(cfg)


if __name__ == "__main__":
    quiet_libraries()
    main()
