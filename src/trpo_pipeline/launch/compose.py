"""conf/ composed with Hydra into a :class:`~trpo_pipeline.config.Config`."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trpo_pipeline.config import Config, ConfigError, config_from_dict
from trpo_pipeline.errors import first_line
from trpo_pipeline.rl.schema import describe_override_key

CONFIG_NAME = "config"
PACKAGE_CONF = Path(__file__).resolve().parents[3] / "conf"  # the checkout the package is in


def find_conf_dir() -> Path:
    """conf/ of the project being run: $TRPO_CONF_DIR, ./conf, or the one beside the package.

    ./conf comes before the package's own so that DVC's experiment copies of the repository
    (`dvc exp run`) compose their own, modified, conf/.
    """
    if env := os.environ.get("TRPO_CONF_DIR"):
        return Path(env).resolve()
    here = Path.cwd() / "conf"
    if (here / f"{CONFIG_NAME}.yaml").is_file():
        return here.resolve()
    return PACKAGE_CONF


def compose(overrides: Sequence[str], conf_dir: Path | None = None) -> Any:
    """Compose conf/ with overrides into a DictConfig (the job config, without hydra's)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    conf_dir = conf_dir or find_conf_dir()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(CONFIG_NAME, overrides=list(overrides))
    except OverrideParseException as err:
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None
    except (HydraException, OmegaConfBaseException) as err:
        raise composition_error(err) from None
    except ValueError as err:  # an integer of thousands of digits
        raise ConfigError("", f"cannot parse override: {first_line(err)}") from None


def composition_error(err: BaseException) -> ConfigError:
    """Hydra's composition error as one line naming the key or the config group."""
    text = str(err)
    if m := re.search(r"Could not override '([^']+)'", text):
        return describe_override_key(Config, m.group(1))
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        allowed = f" (available: {', '.join(options)})" if options else ""
        return ConfigError(group, f"no config {option!r} in conf/{group}/{allowed}")
    return ConfigError("", " ".join(text.split()))


def load_config(cfg: Any) -> Config:
    """Turn a composed Hydra ``DictConfig`` (or plain mapping) into a checked :class:`Config`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(cfg, DictConfig):
        try:
            values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", "") or ""
            raise ConfigError(key, str(err).splitlines()[0]) from None
    else:
        values = cfg
    return config_from_dict(values)


def compose_config(overrides: Sequence[str], conf_dir: Path | None = None) -> Config:
    """:func:`compose` then :func:`load_config`: the checked config of a command line."""
    return load_config(compose(overrides, conf_dir))
