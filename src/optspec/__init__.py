"""optspec: a numerical referee for deep-learning optimizer update rules.

The engine, in layers that import only downward (no module imports one that imports it
back; ``tests/test_layering.py`` checks both):

1. expression language: :mod:`optspec.expr` (and :mod:`optspec.errors`);
2. spec: :mod:`optspec.declarations` (what every spec declares, the shared loader),
   :mod:`optspec.spec` (update rules), :mod:`optspec.schedule_spec` (learning-rate schedules);
3. reference: :mod:`optspec.reference`, :mod:`optspec.schedule_reference`, :mod:`optspec.cases`;
4. error model: :mod:`optspec.mca`, :mod:`optspec.tolerance`;
5. golden: :mod:`optspec.golden_format`, :mod:`optspec.schedule_golden`, :mod:`optspec.golden`;
6. conformance and checking: :mod:`optspec.conformance`, :mod:`optspec.schedules`,
   :mod:`optspec.checking`, :mod:`optspec.report`;
7. commands: :mod:`optspec.commands`, :mod:`optspec.cli`.

Specs, adapters and golden vectors ship inside the package as ``optspec.specs``,
``optspec.impls`` and ``optspec.vectors``.
"""

__version__ = "0.1.0"
