"""optspec: a numerical referee for deep-learning optimizer update rules.

The engine: spec loader (:mod:`optspec.spec`), expression language (:mod:`optspec.expr`),
float64 reference (:mod:`optspec.reference`), golden vectors (:mod:`optspec.golden`),
error model (:mod:`optspec.tolerance`), conformance runner (:mod:`optspec.conformance`)
and command line (:mod:`optspec.cli`). Specs, adapters and golden vectors ship inside the
package as ``optspec.specs``, ``optspec.impls`` and ``optspec.vectors``.
"""

__version__ = "0.1.0"
