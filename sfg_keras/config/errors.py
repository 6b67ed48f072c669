"""`ConfigError`, the one error type of the configuration package, and the "did you mean" helper.

Every problem found in a config file or in a command-line override is a `ConfigError`. Its message names where the
value came from (the config file's path or "command line"), the `[SECTION]`, the key, the value received and what was
expected, and, for a misspelt name, the closest valid one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Keys of the original SFG fork of NiftyNet and of NiftyNet itself, mapped to the key that replaces them here.
# They are suggested when a user carries an old config over.
KEY_ALIASES = {
    "learning_rate": "lr",
    "decay": "lambda1",
    "entropy_decay": "lambda2",
    "tau": "tau0",
    "min_temp": "tau_min",
    "gs_anneal_r": "tau_decay",
    "layer_scale": "width_multiplier",
    "batch_sampling": "sampling",
    "init_categorical": "p0",
    "p_init_type": "init",
    "use_hardcat": "hard",
    "group_connection": "merge",
    "num_gpus": "distribute",
    "iterations": "max_iter",
    "num_iterations": "max_iter",
}

SUGGESTION_CUTOFF = 0.6


class ConfigError(ValueError):
    """A config file, a command-line override or a combination of settings is invalid.

    The message is meant for the person who wrote the config: it names the file (or "command line"), the section,
    the key, the value received and what was expected.

    Example:

    ```python
    try:
        settings = load_settings("configs/age_gender.ini", ["--lr=fast"])
    except ConfigError as error:
        print(error)  # command line (--lr=fast): [TRAINING] lr = 'fast': expected a float > 0
    ```
    """


def _similarity(word: str, candidate: str) -> float:
    """Scores how likely `candidate` is the key a user meant when typing `word` (0 to 1)."""
    word, candidate = word.lower(), candidate.lower()
    score = difflib.SequenceMatcher(None, word, candidate).ratio()
    word_parts = {part for part in word.split("_") if part}
    candidate_parts = {part for part in candidate.split("_") if part}
    if word_parts and candidate_parts:
        shared = word_parts & candidate_parts
        if shared:
            # `lr_rate` -> `lr`, `rate_lr` -> `lr`: a whole word of the key was typed.
            overlap = len(shared) / min(len(word_parts), len(candidate_parts))
            score = max(score, 0.65 * overlap + 0.15 * len(shared) / max(len(word_parts), len(candidate_parts)))
    shorter, longer = sorted((word, candidate), key=len)
    if len(shorter) >= 2 and longer.startswith(shorter) and len(shorter) >= 0.4 * len(longer):
        # `lrate` -> `lr`, `batch` -> `batch_size`: the start of the key was typed.
        score = max(score, 0.7)
    return score


def closest_match(word: str, candidates: Iterable[str], cutoff: float = SUGGESTION_CUTOFF) -> str | None:
    """Returns the candidate closest to `word`, or `None` if none is close enough.

    Args:
        word: the name that was not recognised, e.g. `"lr_rate"`.
        candidates: the valid names.
        cutoff: the lowest similarity (0 to 1) still suggested.

    Returns:
        The best candidate or `None`.

    Example:

    ```python
    closest_match("max_iters", ["max_iter", "lr"])  # "max_iter"
    closest_match("lr_rate", ["max_iter", "lr"])  # "lr"
    ```
    """
    candidates = list(dict.fromkeys(candidates))
    alias = KEY_ALIASES.get(word.lower())
    if alias is not None and alias in candidates:
        return alias
    best, best_score = None, cutoff
    for candidate in candidates:
        score = _similarity(word, candidate)
        if score > best_score or (score == best_score and best is None):
            best, best_score = candidate, score
    return best
