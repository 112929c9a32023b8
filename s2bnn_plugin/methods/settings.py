"""What ``method=s2bnn`` reads from ``method_kwargs``, and the check that refuses anything else.

solo-learn's methods look up the keys they know and ignore the rest, so a typo
(``+method_kwargs.temprature=0.1``) would train with the default and no word.
:func:`check_method_kwargs` refuses a key that s2bnn does not read (naming the nearest one and
every one it reads), a value outside its range (naming the value and the range), and, under
``ssl_kwargs``, a key that the mixed objective does not read. The plugin's Hydra callback runs it
before solo-learn's ``main()`` (one line, exit 2); ``S2BNN.add_and_assert_specific_cfg`` runs it
again for models built in Python.

The keys an objective reads (:func:`objective_keys`) are read off its source. Every solo-learn
method at the pinned commit reads its settings only as ``cfg.method_kwargs.<key>`` attributes
and ``"method_kwargs.<key>"`` paths (``omegaconf_select``, ``OmegaConf.is_missing``) in its
``__init__`` and ``add_and_assert_specific_cfg``, which a walk over the syntax tree finds
exactly, and follows the pin when it moves; a hand-kept table of 19 objectives would not. A class
that uses ``method_kwargs`` any other way (passes it whole, indexes it) gives ``None``: its keys
are then not checked (a test fails for the pinned commit if any objective does that).
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import re
import textwrap
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from s2bnn_plugin.errors import S2BNNError
from s2bnn_plugin.solo_learn.locate import require_solo
from s2bnn_plugin.teachers import FORMATS, OUTPUTS
from s2bnn_plugin.validate import Range

__all__ = [
    "BURN_KEYS",
    "DISTILL_CROPS",
    "KEYS",
    "LOSSES",
    "TEACHER_KEYS",
    "MethodConfigError",
    "check_method_kwargs",
    "objective_class",
    "objective_keys",
    "objective_names",
]

#: every key of ``method_kwargs`` that ``method=s2bnn`` reads
KEYS = (
    "teacher",
    "temperature",
    "distill_weight",
    "head_hidden_dim",
    "loss",
    "burn_lambda_start",
    "burn_lambda_end",
    "distill_crops",
    "ssl_method",
    "ssl_weight",
    "ssl_kwargs",
    "student_init",
)
#: every key of ``method_kwargs.teacher``; ``sha256`` is the teacher file's digest, which the
#: method itself records (args.json keeps it, so a resume with another teacher is refused)
TEACHER_KEYS = ("ckpt", "format", "output", "stem_padding", "sha256")
#: ``method_kwargs.loss``: S2-BNN's KL distillation, or BURN's feature similarity + KL mix
LOSSES = ("kl", "burn")
#: the keys that only ``loss=burn`` reads (its weight schedule)
BURN_KEYS = ("burn_lambda_start", "burn_lambda_end")
#: ``method_kwargs.distill_crops``: every large crop, or the first only (S2-BNN's code)
DISTILL_CROPS = ("all", "first")
NOT_OBJECTIVES = {"base", "linear", "s2bnn"}
MISSING = "???"


class MethodConfigError(S2BNNError, ValueError):
    """``method_kwargs`` that ``method=s2bnn`` cannot train with as given."""


def objective_names() -> list[str]:
    """Names that ``ssl_method`` accepts: ``none`` and every solo-learn objective registered."""
    methods = require_solo().METHODS
    return ["none"] + sorted(set(methods) - NOT_OBJECTIVES)


def objective_class(name: str) -> type | None:
    """The solo-learn method class of objective ``name`` (``None`` for ``none``)."""
    methods = require_solo().METHODS
    if name == "none":
        return None
    if name == "s2bnn":
        raise MethodConfigError(
            "method_kwargs.ssl_method=s2bnn: s2bnn cannot be mixed with itself; choose 'none' "
            "(distillation only) or another objective"
        )
    if name not in methods or name in NOT_OBJECTIVES:
        raise MethodConfigError(
            f"unknown method_kwargs.ssl_method {name!r}{_nearest(name, objective_names())}; "
            f"available: {objective_names()}"
        )
    return methods[name]


@functools.cache
def objective_keys(name: str) -> frozenset[str] | None:
    """The ``method_kwargs`` keys that objective ``name`` reads (empty for ``none``), found in
    the source of its classes below ``BaseMethod``; ``None`` where that source cannot tell."""
    cls = objective_class(name)
    if cls is None:
        return frozenset()
    base = require_solo().BaseMethod
    keys: set[str] = set()
    for klass in cls.__mro__[: cls.__mro__.index(base)]:
        if klass.__module__ == base.__module__:  # BaseMomentumMethod: no method_kwargs of its own
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            return None
        found = _keys_read(tree)
        if found is None:
            return None
        keys |= found
    return frozenset(keys)


def _keys_read(tree: ast.AST) -> set[str] | None:
    """Keys read as ``X.method_kwargs.<key>`` or ``"method_kwargs.<key>[...]"``; ``None`` if
    ``method_kwargs`` is also used in any other way."""
    keys: set[str] = set()
    read_through: set[int] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "method_kwargs"
        ):
            keys.add(node.attr)
            read_through.add(id(node.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r"method_kwargs\.(\w+)(\.[\w.]+)?", node.value)
            if match:
                keys.add(match.group(1))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "method_kwargs"
            and id(node) not in read_through
        ):
            return None
    return keys


# --------------------------------------------------------------------------------- the check


def check_method_kwargs(cfg: Any) -> None:
    """Raise :class:`MethodConfigError` naming every problem in ``cfg.method_kwargs`` of a
    ``method=s2bnn`` config (an omegaconf config or a plain dict; raw or with defaults filled)."""
    mk = _plain(_select(cfg, "method_kwargs"))
    if mk is None:
        mk = {}
    if not isinstance(mk, Mapping):
        raise MethodConfigError(f"method_kwargs must be a mapping of settings, got {mk!r}")
    ssl_method = mk.get("ssl_method", "none")
    ssl_method = str(ssl_method).lower() if ssl_method is not None else "none"
    problems: list[str] = []
    objective = _objective(ssl_method, problems)
    # keys that the objective reads, when ssl_method is one: a hint for misplaced keys
    theirs = (objective_keys(ssl_method) or frozenset()) if objective else frozenset()
    for key in mk:
        if key in KEYS:
            continue
        if key in theirs:
            problems.append(
                f"method_kwargs.{key} is not a setting of method=s2bnn but of {ssl_method}, "
                f"which reads its settings from method_kwargs.ssl_kwargs: set "
                f"method_kwargs.ssl_kwargs.{key} instead"
            )
        else:
            problems.append(_unknown(f"method_kwargs.{key}", "method=s2bnn", KEYS))
    problems += _teacher_problems(mk.get("teacher"))
    problems += _range_problems(mk)
    problems += _ssl_kwargs_problems(mk.get("ssl_kwargs"), ssl_method, objective)
    problems += _student_init_problems(mk.get("student_init"))
    if problems:
        raise MethodConfigError("; ".join(problems))


def _objective(ssl_method: str, problems: list[str]) -> bool:
    """Whether ``ssl_method`` names a real objective (a problem is recorded when it is unknown)."""
    try:
        return objective_class(ssl_method) is not None
    except MethodConfigError as e:
        problems.append(str(e))
        return False


def _teacher_problems(teacher: Any) -> list[str]:
    needs = (
        "method=s2bnn needs a teacher: set method_kwargs.teacher.ckpt to a real-valued "
        "self-supervised checkpoint (solo-learn .ckpt with args.json, MoCo v2 .pth.tar, or "
        "a torchvision ResNet state dict)"
    )
    if teacher is None:
        return [needs]
    if not isinstance(teacher, Mapping):
        return [f"method_kwargs.teacher must be a mapping (ckpt, format, ...), got {teacher!r}"]
    out = [
        _unknown(f"method_kwargs.teacher.{key}", "the teacher", TEACHER_KEYS)
        for key in teacher
        if key not in TEACHER_KEYS
    ]
    if teacher.get("ckpt") in (None, "", MISSING):
        out.append(needs)
    fmt, output = teacher.get("format", "auto"), teacher.get("output", "projector")
    if fmt not in FORMATS:
        out.append(f"method_kwargs.teacher.format must be one of {list(FORMATS)}, got {fmt!r}")
    if output not in OUTPUTS:
        out.append(f"method_kwargs.teacher.output must be one of {list(OUTPUTS)}, got {output!r}")
    pad = teacher.get("stem_padding")
    if pad is not None and not _is_int(pad, 0):
        out.append(f"method_kwargs.teacher.stem_padding must be null or an int >= 0, got {pad!r}")
    return out


def _range_problems(mk: Mapping[str, Any]) -> list[str]:
    out = []
    rules = (
        ("temperature", 0.0, False, "> 0 (a number; the paper's 0.2)"),
        ("distill_weight", 0.0, True, ">= 0 (a number; 0 leaves the distillation loss out)"),
        ("ssl_weight", 0.0, True, ">= 0 (a number)"),
    )
    for key, low, inclusive, rule in rules:
        if key in mk and not _is_number(mk[key], low, inclusive):
            out.append(f"method_kwargs.{key} must be {rule}, got {_show(mk[key])}")
    hidden = mk.get("head_hidden_dim")
    if hidden is not None and not _is_int(hidden, 1):
        out.append(
            "method_kwargs.head_hidden_dim must be an int >= 1 or null (null: the backbone's "
            f"feature width, as S2-BNN's code), got {_show(hidden)}"
        )
    out += _loss_problems(mk)
    crops = mk.get("distill_crops", "all")
    if crops not in DISTILL_CROPS:
        out.append(
            f"method_kwargs.distill_crops must be one of {list(DISTILL_CROPS)} (all: every "
            "large crop; first: the first crop only, shared by teacher and student as in "
            f"S2-BNN's code), got {_show(crops)}"
        )
    return out


def _loss_problems(mk: Mapping[str, Any]) -> list[str]:
    loss = mk.get("loss", "kl")
    if loss not in LOSSES:
        return [
            f"method_kwargs.loss must be one of {list(LOSSES)} (kl: S2-BNN's; burn: BURN's "
            f"feature similarity + KL mix), got {_show(loss)}"
        ]
    given = [key for key in BURN_KEYS if key in mk and mk[key] is not None]
    if loss != "burn":
        if not given:
            return []
        return [
            f"method_kwargs.{key} is set (BURN's weight schedule), but loss={loss} does not "
            "read it: set method_kwargs.loss=burn, or remove it"
            for key in given
        ]
    return [
        f"method_kwargs.{key} must be a number in [0, 1] (the weight of BURN's KL term; "
        f"1 - it weighs the feature similarity term), got {_show(mk[key])}"
        for key in given
        if not (_is_number(mk[key], 0.0, True) and mk[key] <= 1.0)
    ]


def _ssl_kwargs_problems(ssl_kwargs: Any, ssl_method: str, objective: bool) -> list[str]:
    if ssl_kwargs is None:
        return []
    if not isinstance(ssl_kwargs, Mapping):
        return [f"method_kwargs.ssl_kwargs must be a mapping of settings, got {ssl_kwargs!r}"]
    if not ssl_kwargs:
        return []
    if ssl_method == "none":
        return [
            f"method_kwargs.ssl_kwargs ({', '.join(map(str, ssl_kwargs))}) is set, but "
            "ssl_method=none trains no objective that would read it: set "
            "method_kwargs.ssl_method to the objective these settings are for, or remove them"
        ]
    if not objective:
        return []  # the unknown ssl_method is already reported
    accepted = objective_keys(ssl_method)
    if accepted is None:  # its source does not tell (see the module docstring)
        return []
    return [
        _unknown(f"method_kwargs.ssl_kwargs.{key}", ssl_method, sorted(accepted))
        for key in ssl_kwargs
        if key not in accepted
    ]


def _student_init_problems(value: Any) -> list[str]:
    if value in (None, "", MISSING):
        return []
    path = Path(str(value)).expanduser()
    if path.is_file() and _looks_packed(path):
        return [
            f"method_kwargs.student_init={value} is a packed network (.s2bnn), but student_init "
            "takes a training checkpoint: give the .ckpt that solo-learn wrote for step 1 "
            "(packed .s2bnn files are for the CPU engine: s2bnn eval, bench, check)"
        ]
    return []


def _looks_packed(path: Path) -> bool:
    """A packed network file: named ``.s2bnn``, or a zip that is not a torch checkpoint (a torch
    zip holds ``<name>/data.pkl``)."""
    if path.suffix == ".s2bnn":
        return True
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return not any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


# ---------------------------------------------------------------------------------- helpers


def _unknown(path: str, owner: str, accepted: Collection[str]) -> str:
    key = path.rsplit(".", 1)[-1]
    return (
        f"{path} is not a setting of {owner}{_nearest(key, accepted)}; "
        f"{owner} reads: {', '.join(accepted)}"
    )


def _nearest(word: str, choices: Collection[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]}?)" if match else ""


def _is_number(value: Any, low: float, inclusive: bool) -> bool:
    return Range(low, open_low=not inclusive).admits(value)


def _is_int(value: Any, low: int) -> bool:
    return Range(low, whole=True).admits(value)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _select(cfg: Any, key: str) -> Any:
    from omegaconf.errors import OmegaConfBaseException

    try:
        return cfg.get(key)
    except OmegaConfBaseException:  # a missing (???) value
        return MISSING


def _plain(node: Any) -> Any:
    """Plain containers (``???`` kept as the string) from an omegaconf node."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not OmegaConf.is_config(node):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException:  # an interpolation that cannot be resolved yet
        return OmegaConf.to_container(node, resolve=False, throw_on_missing=False)
