"""``gateway.yaml``: its schema, and loading it into a frozen, validated config.

:mod:`~gateway.config.load` is the entry (``load``, ``loads``,
``ConfigError``, ``redacted``, ``unsupported_features``): it parses the YAML,
resolves ``${VAR}`` and ``${file:…}`` references
(:mod:`~gateway.config.expand`), checks the shape against the Structs of
:mod:`~gateway.config.schema` reporting every problem with its dotted path,
then the rules one field cannot express (:mod:`~gateway.config.rules`, with
per-provider upstream rules in :mod:`~gateway.config.upstreams`, the
address and URL guard in :mod:`~gateway.config.addresses` and the managed
settings keys in :mod:`~gateway.config.settings_keys`).
:mod:`~gateway.config.comments` warns about values cut short by an unquoted
`` #``. Pure: text and environment in, a config or every error out; the
gateway validates strictly at boot and refuses to start on any error.
"""
