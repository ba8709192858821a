"""MQTT adapter settings: broker URL parsing and the derived reply topic rule (no broker)."""

from __future__ import annotations

import pytest

from flywheel.errors import ConfigError
from flywheel.serving.mqtt import MqttEndpoint, parse_mqtt_url, reply_topic_for


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", MqttEndpoint("broker", 1883)),
        ("mqtt://127.0.0.1:1884", MqttEndpoint("127.0.0.1", 1884)),
        ("mqtts://b.example.com", MqttEndpoint("b.example.com", 8883, tls=True)),
        ("mqtt://fw:p%40ss@broker:1883/", MqttEndpoint("broker", 1883, False, "fw", "p@ss")),
    ],
)
def test_parse_mqtt_url(url: str, expected: MqttEndpoint) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("broker:1883", "must be a URL"),
        ("http://broker", "expected mqtt or mqtts"),
        ("mqtt://broker:99999", "bad port"),
        ("mqtt://:1883", "names no host"),
        ("mqtt://broker/flywheel/predict", "path or query"),
    ],
)
def test_bad_mqtt_urls_name_the_key_and_the_fix(url: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as err:
        parse_mqtt_url(url)
    assert err.value.details["key"] == "serving.mqtt_url"
    assert "mqtt://host:1883" in err.value.message or "topics" in err.value.message


def test_errors_and_str_never_show_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        parse_mqtt_url("http://fw:SECRET@broker")
    assert "SECRET" not in err.value.message
    endpoint = parse_mqtt_url("mqtt://fw:SECRET@broker")
    assert "SECRET" not in str(endpoint) and "SECRET" not in repr(endpoint)


@pytest.mark.parametrize(
    ("topic", "request_filter", "reply"),
    [
        ("flywheel/predict/c1/42", "flywheel/predict/#", "flywheel/reply/c1/42"),
        ("flywheel/predict", "flywheel/predict/#", "flywheel/reply"),
        ("flywheel/predict/c1", "$share/fw/flywheel/predict/#", "flywheel/reply/c1"),
        ("site/a/predict/7", "site/+/predict/#", "flywheel/reply/a/predict/7"),
    ],
)
def test_derived_reply_topic(topic: str, request_filter: str, reply: str) -> None:
    assert reply_topic_for(topic, request_filter, "flywheel/reply") == reply


def test_adapter_refuses_topics_that_would_loop() -> None:
    from flywheel.serving.mqtt import MqttAdapter

    with pytest.raises(ConfigError, match="outside request_topic"):
        MqttAdapter(None, "mqtt://b", request_topic="flywheel/#")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="wildcard"):
        MqttAdapter(None, "mqtt://b", request_topic="a/#/b")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="qos"):
        MqttAdapter(None, "mqtt://b", qos=2)  # type: ignore[arg-type]
