"""The launcher's config node (conf/hydra/launcher/fused.yaml extends it)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class FusedLauncherConf:
    """hydra/launcher=fused: every job of the sweep in one process, as one fused program on one device."""

    _target_: str = "hydra_plugins.cnnlab_fused_launcher.fused_launcher.FusedLauncher"
    progress_every: int | None = None  # steps between the progress lines of all jobs' losses; null: log_every_n_steps


ConfigStore.instance().store(group="hydra/launcher", name="cnnlab_fused", node=FusedLauncherConf(),
                             provider="cnnlab_fused_launcher")
