"""configfile.load_config on a model of its own: what no site config or request file test reaches."""

from pathlib import Path

import pytest
from pydantic import AliasChoices, BaseModel, Field

from mdagent_hpc.configfile import ConfigFileError, load_config


class Inner(BaseModel):  # allows extras: pydantic alone would drop an unknown key here
    size: int = 1


class Outer(BaseModel):
    name: str
    colour: str | None = Field(None, validation_alias=AliasChoices("colour", "color"))
    inner: Inner | None = None


def problems(tmp_path: Path, content: bytes) -> list[str]:
    path = tmp_path / "outer.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigFileError) as info:
        load_config(path, Outer, "an outer file")
    assert all(p.startswith(f"{path}") for p in info.value.problems)
    return [p.removeprefix(f"{path}") for p in info.value.problems]


def test_reads_a_good_file(tmp_path):
    path = tmp_path / "outer.yaml"
    path.write_text("name: a\ncolor: red\ninner:\n  size: 3\n")
    assert load_config(path, Outer, "an outer file") == Outer(name="a", colour="red", inner=Inner(size=3))


def test_every_problem_at_its_line(tmp_path):
    assert problems(tmp_path, b"name: a\ncolor: red\ncolour: blue\ninner:\n  sise: 2\n  size: x\n") == [
        ":3: colour: given twice, as colour and under another name; keep one",
        ":5: inner.sise: unknown key (did you mean size?); allowed: size",
        ":6: inner.size: input should be a valid integer, unable to parse string as an integer, got 'x'",
    ]


@pytest.mark.parametrize(
    "content, says",
    [
        (b"name: a\x00\n", ": not a text file (it holds control characters); an outer file is YAML"),
        (b"\xff\xfe", ": not a text file; an outer file is YAML"),
        (b"name: a\n---\nname: b\n", ":2: YAML syntax error"),
        (b"name: !!python/object:os.system x\n", ":1: YAML syntax error: could not determine a constructor"),
        (b"# nothing\n", ":1: the file is empty; an outer file needs at least name"),
        (b"name: a\ninner: 3\n", ":2: inner: expected a mapping of keys, got 3"),
    ],
)
def test_one_problem(tmp_path, content, says):
    [problem] = problems(tmp_path, content)
    assert problem.startswith(says), problem


def test_a_folder(tmp_path):
    with pytest.raises(ConfigFileError, match="is a folder, not an outer file"):
        load_config(tmp_path, Outer, "an outer file")
