"""The memos of pipelines/local/beam_reuse.py give exactly what Beam's own functions give, and
work out again whatever changed; reused options behave like fresh ones. No broker needed."""
from __future__ import annotations

import copy
import functools

import apache_beam as beam
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, StandardOptions, TypeOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, userstate
from apache_beam.transforms.userstate import BagStateSpec

import pipelines.local.batch_stages  # noqa: F401  (installs the memos, as every run does)
from pipelines.local import beam_reuse
from pipelines.local.beam_reuse import ViewCachingOptions, reusable_options


class _Plain(beam.DoFn):
    def process(self, element, scale=2):
        yield element * scale


class _Stateful(beam.DoFn):
    BAG = BagStateSpec("bag", beam.coders.VarIntCoder())

    def process(self, element, bag=beam.DoFn.StateParam(BAG)):
        bag.add(element[1])
        yield element


def _functions() -> list:
    def plain(a, b=1, *rest, c=3, **kw):
        return a

    def positional(a, b, /, c=None):
        return a

    return [plain, positional, _Plain().process, _Stateful().process, _Plain.process, functools.partial(plain, 1),
            len, str.upper, lambda x, y=[1]: x, copy.deepcopy, functools.wraps(plain)(lambda *a, **k: None)]


def test_memoized_signatures_equal_beams_own_for_every_kind_of_callable():
    original = beam_reuse._installed["original"]
    for f in _functions():
        for _ in range(3):  # computed, then remembered
            assert beam_reuse.memoized_args_defaults(f) == original(f), f
    assert core.get_function_args_defaults is beam_reuse.memoized_args_defaults


def test_a_replaced_default_or_code_is_seen_and_results_are_fresh_lists():
    def f(a, b=1):
        return a

    first = beam_reuse.memoized_args_defaults(f)
    assert first == (["a", "b"], [1])
    first[0].append("mutated by a caller")
    assert beam_reuse.memoized_args_defaults(f) == (["a", "b"], [1])  # the memo hands out copies
    f.__defaults__ = (5,)
    assert beam_reuse.memoized_args_defaults(f) == (["a", "b"], [5])

    def g(x, y=7, z=8):
        return x

    f.__code__ = g.__code__
    f.__defaults__ = (7, 8)
    assert beam_reuse.memoized_args_defaults(f) == (["x", "y", "z"], [7, 8])
    f.__kwdefaults__ = None
    f.__signature__ = __import__("inspect").signature(lambda q: q)
    assert beam_reuse.memoized_args_defaults(f) == (["q"], [])


def test_dofn_specs_equal_beams_own_and_instance_methods_are_never_memoized():
    original = beam_reuse._installed["specs"]
    for dofn in (_Plain(), _Stateful(), _Stateful(), beam.Map(lambda x: x).fn, beam.FlatMap(lambda x: [x]).fn):
        assert userstate.get_dofn_specs(dofn) == original(dofn)
    assert userstate.is_stateful_dofn(_Stateful()) and not userstate.is_stateful_dofn(_Plain())

    shadowed = _Plain()
    shadowed.process = _Stateful().process  # an instance method of its own: decided per instance
    assert not beam_reuse._class_decides(shadowed)
    assert userstate.get_dofn_specs(shadowed) == original(shadowed)
    assert userstate.is_stateful_dofn(shadowed)
    assert not userstate.is_stateful_dofn(_Plain())  # the class's answer did not change


def test_pipelines_with_plain_and_stateful_dofns_give_the_same_results_as_before():
    def run() -> None:
        with TestPipeline() as p:
            out = (p | beam.Create([("k", 1), ("k", 2), ("j", 3)]) | beam.ParDo(_Stateful())
                   | beam.Map(lambda kv: kv[1]) | beam.ParDo(_Plain()))
            assert_that(out, equal_to([2, 4, 6]))

    run()
    beam_reuse.uninstall()
    try:
        run()
    finally:
        beam_reuse.install()


def test_reused_options_are_shared_safely_and_views_behave_like_fresh_ones():
    options = reusable_options(["--experiments=a", "--type_check_strictness=ALL_REQUIRED"])
    assert options is reusable_options(("--experiments=a", "--type_check_strictness=ALL_REQUIRED"))
    assert isinstance(options, ViewCachingOptions)
    assert options.view_as(StandardOptions).runner.endswith("FnApiRunner")
    assert options.view_as(DebugOptions) is options.view_as(DebugOptions)
    fresh = PipelineOptions(["--experiments=a", "--type_check_strictness=ALL_REQUIRED"])
    fresh.view_as(StandardOptions).runner = options.view_as(StandardOptions).runner
    for cls in (StandardOptions, DebugOptions, TypeOptions):
        fresh.view_as(cls)
    assert options.get_all_options() == fresh.get_all_options()

    # a pipeline works on a deep copy: what it changes never reaches the shared options
    pipeline = beam.Pipeline(options=options)
    pipeline.options.view_as(DebugOptions).experiments.append("changed by a pipeline")
    assert options.view_as(DebugOptions).experiments == ["a"]
    assert options.view_as(StandardOptions).runner.endswith("FnApiRunner")
    # a view's default lists are fresh per options object, as a fresh parse makes them
    other = ViewCachingOptions(["--experiments=a"])
    other.view_as(DebugOptions).experiments.append("b")
    assert ViewCachingOptions(["--experiments=a"]).view_as(DebugOptions).experiments == ["a"]
    assert "_views" not in options.__getstate__()
