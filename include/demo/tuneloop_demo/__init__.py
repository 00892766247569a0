"""tuneloop_demo: the demo world for tuneloop's speech-to-text loop (espeak-ng speech, tiny baseline).

- :mod:`tuneloop_demo.corpus`: seeded command/dictation sentences over a few hundred words.
- :mod:`tuneloop_demo.speech`: espeak-ng synthesis to 16 kHz mono PCM16, optional noise, process pool.
- :mod:`tuneloop_demo.world`: :func:`build_world` (seen/unseen speakers, production traffic, held-out set) and
  :func:`production_utterances` for error-case ingestion, :func:`replay_utterances` for older seen-voice traffic.
- :mod:`tuneloop_demo.baseline`: the shipped baseline model and the bootstrap that regenerates it.
- :mod:`tuneloop_demo.settings`: measured demo hyperparameters and numbers.

The chat demo (``make demo-llm``): :mod:`tuneloop_demo.nickname_world` (questions about nicknames, the facts from
the ``nicknames`` package), :mod:`tuneloop_demo.llm` (production model built here, traffic, the Airflow run),
:mod:`tuneloop_demo.nickname_settings` and :mod:`tuneloop_demo.nickname_measure` (settings and their measurement).

No Airflow here; the generation modules do not import torch.
"""

from tuneloop_demo.world import (
    World,
    WorldConfig,
    build_world,
    load_world,
    production_utterances,
    replay_utterances,
)

__all__ = ["World", "WorldConfig", "build_world", "load_world", "production_utterances", "replay_utterances"]
