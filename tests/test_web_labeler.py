"""The "web" preference source: the server it starts, the answers it reads, the address it gives."""

import sys

import pytest
from gymnasium import spaces

from gym_prefs import PreferenceCallback, PreferenceStore
from gym_prefs.sources import WebLabeler, make_source


def test_web_by_name_with_an_instruction():
    callback = PreferenceCallback("web", instruction="make the hopper do a backflip")
    assert isinstance(callback.source, WebLabeler)
    assert callback.source.instruction == "make the hopper do a backflip"
    assert callback.source.needs_clips


def test_an_instruction_for_the_oracle_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="instruction= is shown to a person"):
        PreferenceCallback("oracle", instruction="run")


def test_several_people_a_query_go_with_the_labelling_page_only():
    assert PreferenceCallback("web", labels_per_query=3).config.labels_per_query == 3
    for source in ("oracle", "human"):
        with pytest.raises(ValueError, match="goes with the source 'web'"):
            PreferenceCallback(source, labels_per_query=3)


def test_the_address_holds_a_random_token_and_binds_loopback_by_default():
    first, second = WebLabeler(start_server=False), WebLabeler(start_server=False)
    assert first.url.startswith("http://127.0.0.1:8765/?token=") and first.token != second.token
    assert len(first.token) >= 16
    assert WebLabeler(token="abc", port=9000, start_server=False).url == "http://127.0.0.1:9000/?token=abc"
    assert 'src="http://127.0.0.1:9000/?token=abc"' in WebLabeler(token="abc", port=9000)._repr_html_()


def test_the_server_is_started_as_its_own_program_and_ended_at_close(tmp_path, monkeypatch):
    import gym_prefs.sources.program_source as program_source

    started, ended = [], []

    class NoServer:
        def __init__(self, argv):
            started.append(argv)

        def poll(self):
            return None

    monkeypatch.setattr(program_source.subprocess, "Popen", NoServer)
    monkeypatch.setattr(program_source, "end_process", lambda process: ended.append(process))
    store = PreferenceStore(tmp_path / "p.db", spaces.Box(-1, 1, (2,)), spaces.Discrete(2), segment_length=5)
    labeler = make_source("web", instruction="balance", port=9001, token="tok")
    labeler.attach(store, 10)
    labeler.request([])
    (argv,) = started
    assert argv[:3] == [sys.executable, "-m", "gym_prefs.web"]
    assert argv[3:] == [
        str(store.path), "--host", "127.0.0.1", "--port", "9001", "--token", "tok", "--render-size", "240",
        "--exit-with", argv[-1],
    ]  # fmt: skip
    assert store.get_meta("instruction") == "balance" and store.get_meta("total_labels") == "10"
    labeler.close()
    assert len(ended) == 1
    store.close()
