"""What Beam re-computes on every pipeline construction, computed once per process.

Every micro-batch builds and runs two small Beam pipelines (docs/architecture.md, D1). Under a
CPU profile of a one-event cycle, half of its cost was Beam re-deriving facts that cannot
change between batches (docs/performance.md, "Per-cycle cost and freshness"):

* **DoFn method signatures.** Beam asks whether a DoFn is stateful about eight times per ParDo
  (at construction, at translation to the runner API and again in the worker), and each time
  it calls ``inspect.signature`` on every method of the DoFn (~30 each): about 4,200
  signatures per cycle. A plain function's argument names and default values are fixed by its
  code object, its ``__defaults__`` / ``__kwdefaults__`` and a ``__signature__`` set on it, so
  they are remembered per function object here and worked out again whenever one of those
  was replaced.
* **Pipeline options.** Beam asks the options for a view (``view_as``) about 85 times per
  pipeline, and each new view builds an argparse parser of that options class and parses the
  arguments again: ~170 parsers per cycle. ``reusable_options`` builds the options once per
  process and set of arguments, and they remember their views.

Two memos replace Beam functions that are looked up through their modules at every call:
``apache_beam.transforms.core.get_function_args_defaults``, the one function through which
Beam's DoFn inspection reads signatures (``get_function_arguments``, ``MethodWrapper``,
``CallableWrapperDoFn``), and ``apache_beam.transforms.userstate.get_dofn_specs`` (the state
and timer specs of a DoFn, which depend only on its class's methods). Both return fresh
containers equal to the original's, so callers cannot tell the difference except by speed
(``pipelines/local/beam_reuse_test.py``). Whatever they cannot prove unchanged — builtins,
partials, wrappers; a DoFn with methods of its own instance or a class that inspects itself
(``_inspect_*``, as ``beam.Map``'s does) — goes to Beam's own code every time.
"""
from __future__ import annotations

import copy
import functools
import types
import weakref
from typing import Any, Callable, Sequence

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.config.beam_options import DEFAULT_RUNNER

_ArgsDefaults = tuple[list[str], list[Any]]

_installed: dict[str, Callable[[Any], _ArgsDefaults]] = {}  # the original, once installed
# per function: (stamp it was computed for, (args, defaults) as a plain function, as a bound method)
_memo: "weakref.WeakKeyDictionary[types.FunctionType, dict[bool, tuple[tuple, _ArgsDefaults]]]" = (
    weakref.WeakKeyDictionary())


def _stamp(func: types.FunctionType) -> tuple:
    """Everything ``inspect.signature`` reads to find a plain function's parameter names and
    defaults (a wrapper's signature is its wrapped function's: those are not memoized)."""
    kwdefaults = func.__kwdefaults__
    return (func.__code__, func.__defaults__, func.__dict__.get("__signature__"),
            tuple(kwdefaults.items()) if kwdefaults else None)


def _same(a: tuple, b: tuple) -> bool:
    """Identical objects (the code, the defaults tuple, a set signature); equal keyword defaults."""
    return a[0] is b[0] and a[1] is b[1] and a[2] is b[2] and a[3] == b[3]


def memoized_args_defaults(f: Any) -> _ArgsDefaults:
    """``get_function_args_defaults(f)``, computed once per function (and per bound/unbound)."""
    original = _installed["original"]
    if isinstance(f, types.MethodType) and type(f.__func__) is types.FunctionType:
        func, bound = f.__func__, True
    elif type(f) is types.FunctionType:
        func, bound = f, False
    else:
        return original(f)
    if "__wrapped__" in func.__dict__:
        return original(f)
    stamp = _stamp(func)
    entries = _memo.get(func)
    hit = entries.get(bound) if entries is not None else None
    if hit is None or not _same(hit[0], stamp):
        args, defaults = original(f)
        hit = (stamp, (list(args), list(defaults)))
        _memo.setdefault(func, {})[bound] = hit
    args, defaults = hit[1]
    return list(args), list(defaults)


_specs_memo: "weakref.WeakKeyDictionary[type, tuple[set, set]]" = weakref.WeakKeyDictionary()
_plain_classes: "weakref.WeakKeyDictionary[type, bool]" = weakref.WeakKeyDictionary()


def _plain_class(cls: type) -> bool:
    """The class neither inspects itself (``_inspect_*``) nor changes attribute look-up or listing."""
    plain = _plain_classes.get(cls)
    if plain is None:
        plain = _plain_classes[cls] = (cls.__dir__ is object.__dir__ and not hasattr(cls, "__getattr__")
                                       and not any(name.startswith("_inspect_") for name in dir(cls)))
    return plain


def _class_decides(dofn: Any) -> bool:
    """True when the DoFn's methods are its class's: a plain class, and nothing on the instance
    is a method of its own or hides something callable of the class (instance data such as
    Beam's cached ``_type_hints`` is fine)."""
    cls = type(dofn)
    if not _plain_class(cls):
        return False
    own = getattr(dofn, "__dict__", {})
    return not any(isinstance(value, types.MethodType) or callable(getattr(cls, name, None)) for name, value in own.items())


def memoized_dofn_specs(dofn: Any) -> tuple[set, set]:
    """``get_dofn_specs(dofn)``, computed once per DoFn class where the class decides it."""
    original = _installed["specs"]
    if not _class_decides(dofn):
        return original(dofn)
    cls = type(dofn)
    found = _specs_memo.get(cls)
    if found is None:
        states, timers = original(dofn)
        found = _specs_memo[cls] = (set(states), set(timers))
    return set(found[0]), set(found[1])


def install() -> None:
    """Makes Beam's DoFn inspection go through the memos (idempotent)."""
    from apache_beam.transforms import core, userstate

    if not (hasattr(core, "get_function_args_defaults") and hasattr(userstate, "get_dofn_specs")):
        return  # another Beam release: its own inspection runs, only slower (Beam is pinned)
    if "original" not in _installed:
        _installed["original"] = core.get_function_args_defaults
        _installed["specs"] = userstate.get_dofn_specs
        core.get_function_args_defaults = memoized_args_defaults
        userstate.get_dofn_specs = memoized_dofn_specs


def uninstall() -> None:
    """Puts Beam's own functions back (tests compare the two)."""
    from apache_beam.transforms import core, userstate

    if "original" in _installed:
        core.get_function_args_defaults = _installed.pop("original")
        userstate.get_dofn_specs = _installed.pop("specs")
        _memo.clear()
        _specs_memo.clear()
        _plain_classes.clear()


class ViewCachingOptions(PipelineOptions):
    """PipelineOptions whose views cost no argument parsing after the first of each class.

    Beam's ``view_as(cls)`` builds ``cls(flags)`` — a new argparse parser of that class's
    options, and a parse of the flags — then fills the options dictionary with the defaults of
    options not set yet and points the view at that dictionary. Here each view is made once
    per options object, and the parse of ``cls`` for these flags once per process
    (``_parsed``): a view is rebuilt from that parse the way Beam builds it, with the defaults
    deep-copied into the dictionary, as a fresh parse would give fresh lists. A view holds no
    state of its own (every view reads and writes the one options dictionary), so a remembered
    view is the same as a new one. The remembered views are not part of the pickled (or
    deep-copied) state: ``beam.Pipeline`` deep-copies its options, and the copy makes its own
    views, bound to its own dictionary. Defines no options of its own.
    """

    def view_as(self, cls):  # type: ignore[no-untyped-def]
        views = self.__dict__.setdefault("_views", {})  # not through __setattr__: Beam allows option names only
        view = views.get(cls)
        if view is None:
            view = views[cls] = self._new_view(cls)
        return view

    def _new_view(self, cls):  # type: ignore[no-untyped-def]
        if self._flags is None:  # flags read from sys.argv: left to Beam
            return super().view_as(cls)
        parsed = _parsed(cls, tuple(self._flags))
        view = object.__new__(cls)
        object.__setattr__(view, "_flags", self._flags)
        object.__setattr__(view, "_visible_options", parsed)
        for name in view._visible_option_list():
            if name not in self._all_options:
                self._all_options[name] = copy.deepcopy(getattr(parsed, name))
        object.__setattr__(view, "_all_options", self._all_options)
        return view

    def __getstate__(self):  # type: ignore[no-untyped-def]
        state = super().__getstate__()
        if "_views" in state:
            state = {k: v for k, v in state.items() if k != "_views"}
        return state


@functools.lru_cache(maxsize=256)
def _parsed(cls: type, flags: tuple[str, ...]) -> Any:
    """What ``cls(flags)`` parses (an argparse namespace), once per process; never modified."""
    return cls(list(flags))._visible_options


def reusable_options(beam_args: Sequence[str]) -> PipelineOptions:
    """PipelineOptions for ``beam_args`` (our runner unless one is named), built once per
    process and set of arguments and shared by every micro-batch's pipelines. Sharing is safe:
    ``beam.Pipeline`` works on a deep copy of the options it is given (and restores the runner
    it blanks on the original while copying)."""
    return _reusable_options(tuple(beam_args))


@functools.lru_cache(maxsize=8)
def _reusable_options(beam_args: tuple[str, ...]) -> PipelineOptions:
    options = ViewCachingOptions(list(beam_args))
    if not any(a.startswith("--runner") for a in beam_args):
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options
