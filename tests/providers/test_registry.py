"""Registry parsing: the demo file loads, and every malformed file names its line."""

from __future__ import annotations

import pytest

from arena.config import REPO_ROOT
from arena.providers.registry import ModelRegistry, RegistryError, UnknownModelError, load_registry

GOOD = """
[[models]]
name = "gpt-4o"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"
weight = 2
max_tokens = 1024
organization = "OpenAI"
license = "Proprietary"
tags = ["proprietary"]

[[models]]
name = "llama-3-8b"
base_url = "http://gpu-box:8000/v1"
model_id = "meta-llama/Meta-Llama-3-8B-Instruct"
tags = ["open", "release-ok"]
"""


def test_parses_every_field_and_defaults() -> None:
    registry = ModelRegistry.from_toml_text(GOOD)
    assert registry.names() == ["gpt-4o", "llama-3-8b"]
    gpt = registry["gpt-4o"]
    assert gpt.base_url == "https://api.openai.com/v1" and gpt.weight == 2.0 and gpt.max_tokens == 1024
    assert gpt.model_id == "gpt-4o" and not gpt.is_open
    llama = registry["llama-3-8b"]
    assert llama.model_id == "meta-llama/Meta-Llama-3-8B-Instruct" and llama.is_open and llama.api_key() == "EMPTY"


def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert ModelRegistry.from_toml_text(GOOD)["gpt-4o"].api_key() == "sk-test"


def test_the_demo_registry_loads() -> None:
    registry = load_registry(REPO_ROOT / "data" / "models.toml")
    assert len(registry) >= 2 and all(name.startswith("demo-") for name in registry)


def test_context_windows_fill_only_what_the_registry_leaves_open() -> None:
    registry = ModelRegistry.from_toml_text(
        '[[models]]\nname = "a"\nbase_url = "http://x"\ncontext_tokens = 4096\n'
        '[[models]]\nname = "b"\nbase_url = "http://x"\n'
        '[[models]]\nname = "c"\nbase_url = "http://x"\n'
    )
    filled = registry.with_context_windows({"a": 128000, "b": 16384})
    assert [filled[n].context_tokens for n in "abc"] == [4096, 16384, None]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nname = "a"\nbase_url = "http://x"\nweight = \n', r"models.toml: invalid TOML: .*line 4"),
        ('[[models]]\nname = "a"\nbase_url = "http://x"\n\n[[models]]\nname = "b"\n', r"models.toml:5: .*base_url"),
        ('[[models]]\nname = "a"\nbase_url = "http://x"\ncolour = "red"\n', r"models.toml:1: unknown field.*colour"),
        ('[[models]]\nname = "a"\nbase_url = "http://x"\nweight = -1\n', r"models.toml:1: weight"),
        ('[[models]]\nname = "a"\nbase_url = "http://x"\ntags = "open"\n', r"models.toml:1: tags"),
        ('[[models]]\nname = "a"\nbase_url = "x"\n[[models]]\nname = "a"\nbase_url = "y"\n', r"defined twice"),
        ('title = "nothing"\n', r"no \[\[models\]\]"),
        ('[[models]]\nname = "a"\nbase_url = "x"\nmax_tokens = 512\ncontext_tokens = 256\n',
         r"models.toml:1: context_tokens must be an integer above max_tokens \(512\)"),
        ('[[models]]\nname = "a"\nbase_url = "x"\ncontext_tokens = true\n', r"models.toml:1: context_tokens"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_text(text)
    with pytest.raises(RegistryError, match=message):
        ModelRegistry.from_toml(path)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        ModelRegistry.from_toml_text(GOOD)["nope"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("weight = inf", r"models.toml:4: weight must be a finite number >= 0, got inf"),
        ("weight = nan", r"models.toml:4: weight must be a finite number >= 0, got nan"),
        ("weight = true", r"models.toml:4: weight must be a finite number >= 0, got True"),
        ("max_tokens = true", r"models.toml:4: max_tokens must be a positive integer, got True"),
        ("organization = 3", r"models.toml:4: organization must be a string, got 3"),
    ],
)
def test_numbers_that_are_not_numbers_are_refused(tmp_path, fields: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nname = "a"\nbase_url = "http://x"\n[[models]]\nname = "b"\nbase_url = "y"\n{fields}\n')
    with pytest.raises(RegistryError, match=message):
        ModelRegistry.from_toml(path)


def test_a_header_inside_a_string_does_not_shift_the_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nname = "a"\nbase_url = "http://x"\norganization = """\n[[models]]\n"""\n\n'
                    '[[models]]\nname = "b"\nweight = -2\nbase_url = "http://y"\n')
    with pytest.raises(RegistryError, match=r"models.toml:8: weight"):
        ModelRegistry.from_toml(path)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "models.toml"
    path.write_bytes(b'[[models]]\nname = "a"\norganization = "Caf\xe9"\n')
    with pytest.raises(RegistryError, match=r"models.toml:3: not UTF-8 \(byte 0xe9\)"):
        ModelRegistry.from_toml(path)
