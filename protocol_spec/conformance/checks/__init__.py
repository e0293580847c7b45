"""The checks, one module per group of SPEC sections; importing this registers them in run order.

Order matters only for time and isolation: cheap, read-only checks first;
sign-in before the checks that reuse its people; spend caps last, because
they are the only checks that change the target's state for a caller; then
the sessions API, whose revocations end families earlier checks keep.
"""

# isort: skip_file
# (The import order below is the run order.)
from protocol_spec.conformance.checks import surface  # noqa: F401
from protocol_spec.conformance.checks import signin  # noqa: F401
from protocol_spec.conformance.checks import bearer  # noqa: F401
from protocol_spec.conformance.checks import messages  # noqa: F401
from protocol_spec.conformance.checks import streaming  # noqa: F401
from protocol_spec.conformance.checks import limits  # noqa: F401
from protocol_spec.conformance.checks import policy  # noqa: F401
from protocol_spec.conformance.checks import replay  # noqa: F401
from protocol_spec.conformance.checks import telemetry  # noqa: F401
from protocol_spec.conformance.checks import gatehouse_telemetry  # noqa: F401
from protocol_spec.conformance.checks import bedrock  # noqa: F401
from protocol_spec.conformance.checks import vertex  # noqa: F401
from protocol_spec.conformance.checks import spend  # noqa: F401
from protocol_spec.conformance.checks import sessions  # noqa: F401
