"""Default settings of the solo-learn objectives that ``s2bnn`` can be mixed with.

Values are solo-learn's own CIFAR recipes (its ``scripts/pretrain/cifar/*.yaml``), so that
``method_kwargs.ssl_method=<name>`` alone gives a working mix; anything in
``method_kwargs.ssl_kwargs`` overrides them. A method missing here falls back to its config in the
solo-learn checkout, if present (only the keys the method reads:
:func:`s2bnn_plugin.methods.settings.objective_keys`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SSL_DEFAULTS", "MOMENTUM_DEFAULTS", "ssl_defaults"]

SSL_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 2048, "proj_output_dim": 256, "temperature": 0.2},
    "mocov2plus": {
        "proj_hidden_dim": 2048,
        "proj_output_dim": 256,
        "queue_size": 32768,
        "temperature": 0.2,
    },
    "byol": {"proj_hidden_dim": 4096, "proj_output_dim": 256, "pred_hidden_dim": 4096},
    "barlow_twins": {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "scale_loss": 0.1},
    "vicreg": {
        "proj_hidden_dim": 2048,
        "proj_output_dim": 2048,
        "sim_loss_weight": 25.0,
        "var_loss_weight": 25.0,
        "cov_loss_weight": 1.0,
    },
    "swav": {
        "proj_hidden_dim": 2048,
        "queue_size": 3840,
        "proj_output_dim": 128,
        "num_prototypes": 3000,
        "epoch_queue_starts": 50,
        "freeze_prototypes_epochs": 2,
        "temperature": 0.1,
    },
    "dino": {"proj_hidden_dim": 2048, "proj_output_dim": 256, "num_prototypes": 4096},
    "simsiam": {"proj_hidden_dim": 2048, "proj_output_dim": 2048, "pred_hidden_dim": 512},
    "mocov3": {
        "proj_hidden_dim": 4096,
        "proj_output_dim": 256,
        "pred_hidden_dim": 4096,
        "temperature": 0.2,
    },
    "nnclr": {
        "temperature": 0.2,
        "proj_hidden_dim": 2048,
        "pred_hidden_dim": 4096,
        "proj_output_dim": 256,
        "queue_size": 65536,
    },
}

# solo-learn's momentum block (base_tau, final_tau) for the momentum-based objectives above
MOMENTUM_DEFAULTS: dict[str, dict[str, float]] = {
    "mocov2plus": {"base_tau": 0.99, "final_tau": 0.999},
    "byol": {"base_tau": 0.99, "final_tau": 1.0},
    "dino": {"base_tau": 0.9995, "final_tau": 1.0},
    "mocov3": {"base_tau": 0.99, "final_tau": 1.0},
}


def _from_checkout(name: str) -> tuple[dict[str, Any], dict[str, float]] | None:
    """solo-learn's own CIFAR config for ``name``, read from the checkout if there is one."""
    import yaml  # hydra brings PyYAML

    from s2bnn_plugin.methods.settings import objective_keys
    from s2bnn_plugin.solo_learn.locate import solo_checkout

    root = solo_checkout()
    if root is None:
        return None
    folder = root / "scripts" / "pretrain" / "cifar"
    for path in (folder / f"{name}.yaml", folder / f"{name.split('_')[0]}.yaml"):
        if path.is_file():
            cfg = yaml.safe_load(path.read_text()) or {}
            if cfg.get("method") == name:
                kwargs = dict(cfg.get("method_kwargs") or {})
                # solo-learn's configs carry keys their method never reads (ressl's
                # base_tau_momentum, ...): mixed in, check_method_kwargs would refuse them
                read = objective_keys(name)
                if read is not None:
                    kwargs = {k: v for k, v in kwargs.items() if k in read}
                return kwargs, dict(cfg.get("momentum") or {})
    return None


def ssl_defaults(name: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(method_kwargs, momentum) defaults for mixing ``name`` into s2bnn."""
    if name in SSL_DEFAULTS:
        return dict(SSL_DEFAULTS[name]), dict(MOMENTUM_DEFAULTS.get(name, {}))
    found = _from_checkout(name)
    return found if found is not None else ({}, {})
