"""The one exception type for user mistakes."""


class MeterError(ValueError):
    """Bad input: the message is one line naming the input and the fix.

    The CLI prints it and exits non-zero without a traceback; library callers can catch it.
    """


class UnknownArchitecture(MeterError):
    """The analytic engine has no reader for this model_type (the runtime then measures it: meter.engine.measure)."""
