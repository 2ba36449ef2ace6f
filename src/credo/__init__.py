"""credo: reinforcement-learning post-training of language models, one tested part at a time."""

import sys

__version__ = "0.1.0"

# tomllib (config files) and the typing features the config schema uses arrive in Python 3.11;
# pyproject's requires-python says the same, this catches an interpreter that bypassed pip.
MIN_PYTHON = (3, 11)


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> None:
    if tuple(version[:2]) < MIN_PYTHON:
        raise RuntimeError(f"credo needs Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}; this is Python "
                           f"{'.'.join(map(str, version))}")


check_python()
