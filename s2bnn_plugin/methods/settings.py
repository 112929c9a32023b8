"""What ``method=s2bnn`` reads from ``method_kwargs`` (:data:`SETTINGS`), and the check that
refuses anything else.

:data:`SETTINGS` is the one table of the method's settings: each row's key, default, accepted
values and meaning. ``S2BNN.add_and_assert_specific_cfg`` fills the defaults from it,
:func:`check_method_kwargs` checks the values against it, and docs/training.md's table is
:func:`markdown_table` (a test keeps the two equal).

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
from s2bnn_plugin.methods.losses import LOSSES
from s2bnn_plugin.solo_learn.locate import require_solo
from s2bnn_plugin.teachers import FORMATS, OUTPUTS, STEM_PADDINGS
from s2bnn_plugin.validate import NO_DEFAULT, Range, Setting

__all__ = [
    "DISTILL_CROPS",
    "KEYS",
    "LOSS_KEYS",
    "SETTINGS",
    "TEACHER_KEYS",
    "MethodConfigError",
    "check_method_kwargs",
    "default_words",
    "markdown_table",
    "objective_class",
    "objective_keys",
    "objective_names",
    "reads",
]

#: ``method_kwargs.distill_crops``: every large crop, or the first only (S2-BNN's code)
DISTILL_CROPS = ("all", "first")

_TEACHER_SETTINGS = (
    Setting(
        "teacher.ckpt",
        NO_DEFAULT,
        "the teacher checkpoint",
        accepted="a file",
        shown_default="required",
    ),
    Setting(
        "teacher.format",
        "auto",
        "`solo` (a solo-learn `.ckpt` with its `args.json` beside it: any solo-learn method can "
        "teach), `moco` (MoCo v2 `state_dict` with `module.encoder_q.*`, as the paper's "
        "teacher), `torchvision` (a plain ResNet state dict)",
        choices=FORMATS,
    ),
    Setting(
        "teacher.output",
        "projector",
        "the teacher's prediction (projector / MLP head) or `backbone` features",
        choices=OUTPUTS,
    ),
    Setting(
        "teacher.stem_padding",
        None,
        "the padding of a bare state dict's 3x3 stem, which its weights do not record; null: 1, "
        'with a warning ("Teachers")',
        numbers=STEM_PADDINGS,
        null=True,
        accepted="null or an int >= 0",
    ),
    Setting(
        "teacher.sha256",
        NO_DEFAULT,
        "the teacher file's SHA-256, which the run's `args.json` keeps: a resume with another "
        "teacher is refused",
        accepted="-",
        shown_default="set by the method",
    ),
)
#: ``method_kwargs.loss``: which registered loss (:mod:`~s2bnn_plugin.methods.losses`) distils
_LOSS = Setting(
    "loss",
    "kl",
    "S2-BNN's KL calibration, or BURN's mix (\"BURN's loss\")",
    choices=tuple(LOSSES),
    hint="; ".join(f"{name}: {loss.summary}" for name, loss in LOSSES.items()),
)
_DISTILL_SETTINGS = (
    Setting(
        "temperature",
        0.2,
        "distillation temperature",
        numbers=Range(0, open_low=True),
        hint="a number; the paper's 0.2",
    ),
    Setting(
        "distill_weight",
        1.0,
        "weight of the distillation loss",
        numbers=Range(0),
        hint="a number; 0 leaves the distillation loss out",
    ),
    Setting(
        "head_hidden_dim",
        None,
        "hidden size of the student's distillation head; null: the backbone's feature width",
        numbers=Range(1, whole=True),
        null=True,
        hint="null: the backbone's feature width, as S2-BNN's code",
    ),
    _LOSS,
)
_MIXING_SETTINGS = (
    Setting(
        "distill_crops",
        "all",
        "distil on every large crop, or on the first only, shared by teacher and student",
        choices=DISTILL_CROPS,
        hint="all: every large crop; first: the first crop only, shared by teacher and student "
        "as in S2-BNN's code",
    ),
    Setting(
        "ssl_method",
        "none",
        "an objective to train alongside",
        accepted="`none` or a solo-learn method",
    ),
    Setting(
        "ssl_weight",
        1.0,
        "`loss = class_loss [+ momentum_class_loss] + ssl_weight * ssl_loss + distill_weight * "
        "distill_loss`",
        numbers=Range(0),
        hint="a number",
    ),
    Setting(
        "ssl_kwargs",
        NO_DEFAULT,
        "the mixed method's own `method_kwargs`",
        accepted="the keys that method reads",
        shown_default="solo-learn's CIFAR recipe for that method",
    ),
    Setting(
        "student_init",
        None,
        "a step-1 checkpoint to start step 2 from",
        null=True,
        accepted="a training checkpoint",
    ),
)
#: every setting of ``method=s2bnn``, keys relative to ``method_kwargs``, in the docs' order
#: (each registered loss's own settings after ``loss``)
SETTINGS: tuple[Setting, ...] = (
    *_TEACHER_SETTINGS,
    *_DISTILL_SETTINGS,
    *(setting for loss in LOSSES.values() for setting in loss.settings),
    *_MIXING_SETTINGS,
)
#: every key of ``method_kwargs`` that ``method=s2bnn`` reads
KEYS = tuple(dict.fromkeys(s.key.partition(".")[0] for s in SETTINGS))
#: every key of ``method_kwargs.teacher``; ``sha256`` is the teacher file's digest, which the
#: method itself records (args.json keeps it, so a resume with another teacher is refused)
TEACHER_KEYS = tuple(s.key.partition(".")[2] for s in _TEACHER_SETTINGS)
#: the keys that one registered loss alone reads -> that loss's name
LOSS_KEYS = {s.key: name for name, loss in LOSSES.items() for s in loss.settings}
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
    return out + _value_problems(teacher, _TEACHER_SETTINGS, "teacher.")


def _value_problems(
    given: Mapping[str, Any], settings: tuple[Setting, ...], prefix: str = ""
) -> list[str]:
    """The refusals of the values ``given`` for ``settings`` (keys ``prefix`` + the key given)."""
    out = []
    for setting in settings:
        key = setting.key.removeprefix(prefix)
        if key in given:
            problem = setting.problem(f"method_kwargs.{setting.key}", given[key])
            if problem is not None:
                out.append(problem)
    return out


def _range_problems(mk: Mapping[str, Any]) -> list[str]:
    loss = mk.get("loss", _LOSS.default)
    out = _value_problems(mk, _DISTILL_SETTINGS)
    if _LOSS.admits(loss):  # else refused above: which loss reads what is unknown
        for name, cls in LOSSES.items():
            given = tuple(s for s in cls.settings if mk.get(s.key) is not None)
            if name == loss:
                out += _value_problems(mk, given)
                continue
            out += [
                f"method_kwargs.{s.key} is set ({cls.settings_are}), but loss={loss} does not "
                f"read it: set method_kwargs.loss={name}, or remove it"
                for s in given
            ]
    return out + _value_problems(mk, _MIXING_SETTINGS)


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


def reads(setting: Setting, method_kwargs: Mapping[str, Any]) -> bool:
    """Whether ``method=s2bnn`` with these ``method_kwargs`` reads ``setting``: a loss's own
    settings only with that loss (the loss is looked up for those alone)."""
    owner = LOSS_KEYS.get(setting.key)
    return owner is None or method_kwargs.get("loss", _LOSS.default) == owner


# ------------------------------------------------------------------------------ the docs' table


def markdown_table() -> str:
    """docs/training.md's table of the settings: key, default, accepted values, meaning."""
    lines = ["| key | default | accepted | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        lines.append(f"| `{s.key}` | {default_words(s)} | {_accepted_words(s)} | {s.doc} |")
    return "\n".join(lines)


def default_words(setting: Setting) -> str:
    """A setting's default as the docs write it: ``0.2``, ```kl```, ``null``, ``required``."""
    value = setting.default
    if value is NO_DEFAULT:
        return setting.shown_default
    if value is None:
        return "null"
    return f"`{value}`" if isinstance(value, str) else str(value)


def _accepted_words(setting: Setting) -> str:
    if setting.accepted:
        words = setting.accepted
    elif setting.choices is not None:
        words = ", ".join(f"`{c}`" for c in setting.choices)
    else:
        numbers = setting.numbers
        assert numbers is not None, setting  # every row says what it accepts
        interval = numbers.interval()
        two_sided = numbers.low is not None and numbers.high is not None
        noun = "an int" if numbers.whole else "a number"
        words = f"{noun} {'in ' if two_sided else ''}{interval}"
        if setting.null:
            words += ", or null"
    if setting.key in LOSS_KEYS:
        words += f"; `loss={LOSS_KEYS[setting.key]}` only"
    return words


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
