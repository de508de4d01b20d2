"""KafkaSettings in librdkafka's names: the range reader (confluent-kafka) must connect exactly as
kafka-python's clients do, with the same security settings."""
from __future__ import annotations

import pytest
from confluent_kafka import Consumer, KafkaException

from pipelines.kafka.read import range_reader_config
from pipelines.kafka.settings import _LIBRDKAFKA_NAMES, KafkaSettings

SASL = KafkaSettings(bootstrap_servers=" 10.0.0.1:9093, 10.0.0.2:9093 ", security_protocol="SASL_PLAINTEXT",
                     sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="reader", sasl_plain_password="s3cret",
                     request_timeout_ms=12_345)


def test_every_security_setting_kafka_python_gets_reaches_librdkafka():
    kwargs = SASL.client_kwargs()
    config = SASL.librdkafka_config()
    assert config["bootstrap.servers"] == "10.0.0.1:9093,10.0.0.2:9093"
    assert config["security.protocol"] == "sasl_plaintext" and config["socket.timeout.ms"] == 12_345
    assert {name: config[name] for name in ("sasl.mechanisms", "sasl.username", "sasl.password")} == {
        "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "reader", "sasl.password": "s3cret"}
    # every optional connection keyword of kafka-python has a librdkafka name
    optional = set(kwargs) - {"bootstrap_servers", "security_protocol", "request_timeout_ms"}
    assert optional <= set(_LIBRDKAFKA_NAMES)


def test_librdkafka_accepts_the_reader_configuration_it_is_given():
    """librdkafka rejects an unknown or ill-typed property when the client is made: the reader's
    whole configuration, with SASL, and with a byte budget, makes a consumer (no broker needed)."""
    for budget in (None, 10_000, 500 * 1024 * 1024):
        Consumer(range_reader_config(SASL, budget)).close()


@pytest.mark.parametrize("field", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_tls_file_settings_reach_librdkafka_by_their_own_names(tmp_path, field):
    """A TLS file that does not exist fails on that very property, which shows librdkafka took it."""
    settings = KafkaSettings(security_protocol="SSL", ssl_password="key-secret", **{field: str(tmp_path / "gone.pem")})
    with pytest.raises(KafkaException) as failure:
        Consumer(range_reader_config(settings, None))
    assert f"{_LIBRDKAFKA_NAMES[field]} failed" in str(failure.value)
