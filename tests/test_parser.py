import json

import pytest
from conftest import CORPUS

from mdagent_hpc.lammps.parser import ScriptError, parse_script, parse_text, split_words, strip_comment

MANIFEST = json.loads((CORPUS / "manifest.json").read_text())["examples"]


def test_continuation_comments_and_quotes():
    s = parse_text(
        "units lj # comment\n"
        "\n"
        'fix 1 all print 10 "T = # not a comment" &\n'
        "    file out.txt\n"
        "print 'single quoted'\n"
        'print """triple\nquoted # still text\n"""\n'
        "run 10\n"
    )
    assert [c.line for c in s.commands] == [1, 3, 5, 6, 9]
    assert s.commands[1].words == ["fix", "1", "all", "print", "10", "T = # not a comment", "file", "out.txt"]
    assert s.commands[3].words[1].startswith("triple\nquoted # still text")
    assert s.commands[4].words == ["run", "10"]


def test_strip_comment_and_split_keep_quoted_text():
    assert strip_comment('print "a # b" # c') == 'print "a # b" '
    assert split_words("a 'b c' \"d e\"f g") == ["a", "b c", "d ef", "g"]


def test_variables_substituted_with_current_value_and_all_variants():
    s = parse_text(
        "variable T equal 300\n"
        "variable T2 equal 2*v_T\n"
        "variable n index 10 20 30\n"
        "fix 1 all nvt temp ${T} ${T2} 0.1\n"
        "run $n\n"
        'print "${T} is not substituted in quotes"\n'
    )
    fix, run, pr = s.commands[3], s.commands[4], s.commands[5]
    assert fix.words[5:7] == ["300", "600"]
    assert run.words == ["run", "10"]
    assert sorted(v[1] for v in run.variants) == ["10", "20", "30"]
    assert pr.words[1] == "${T} is not substituted in quotes"
    assert s.variables["n"] == ["10", "20", "30"]


def test_substitution_before_word_splitting():
    # LAMMPS substitutes on the line, so a string variable can become a command with arguments.
    s = parse_text("variable c string 'shell touch'\n${c} x\n")
    assert s.commands[1].words == ["shell", "touch", "x"]


def test_variable_in_quotes_of_if_is_parsed_as_nested_command():
    s = parse_text('variable a equal 1\nif "${a} > 0" then "shell rm x" else "print no"\n')
    nested = [c for c in s.commands if c.context == "if"]
    assert [c.words for c in nested] == [["shell", "rm", "x"], ["print", "no"]]
    assert all(c.line == 2 for c in nested)


def test_undefined_variable_is_a_diagnostic_with_line():
    s = parse_text("units lj\nrun ${steps}\n")
    (d,) = s.diagnostics
    assert (d.code, d.line) == ("parse.undefined_variable", 2)
    assert "steps" in d.message and "variable steps" in d.hint


def test_include_and_files(tmp_path):
    (tmp_path / "in.main").write_text(
        "include in.setup\nread_data data.x\ndump 1 all atom 10 dump.*.txt\n"
        "write_restart final.restart\nlog log.extra append\n"
    )
    (tmp_path / "in.setup").write_text("units metal\nmolecule w water.mol offset 1 0 0 0 0\n")
    s = parse_script(tmp_path / "in.main")
    assert [(c.file, c.line, c.name) for c in s.commands][:3] == [
        ("in.main", 1, "include"),
        ("in.setup", 1, "units"),
        ("in.setup", 2, "molecule"),
    ]
    files = {(f.path, f.mode, f.kind) for f in s.files}
    assert files == {
        ("in.setup", "read", "include"),
        ("water.mol", "read", "molecule"),
        ("data.x", "read", "data"),
        ("dump.*.txt", "write", "dump"),
        ("final.restart", "write", "restart"),
        ("log.extra", "write", "log"),
    }


def test_loop_and_label(tmp_path):
    s = parse_text('variable i loop 3\nlabel top\nprint "file_${i}" file out.${i}\nnext i\njump SELF top\n')
    prints = s.find("print")[0]
    assert sorted(v[3] for v in prints.variants) == ["out.1", "out.2", "out.3"]


@pytest.mark.parametrize(
    "problem, message",
    [
        (b"\x00\x01binary", "binary file"),
        (None, "no such file"),
    ],
)
def test_unreadable_scripts(tmp_path, problem, message):
    path = tmp_path / "in.x"
    if problem is not None:
        path.write_bytes(problem)
    with pytest.raises(ScriptError, match=message):
        parse_script(path)


@pytest.mark.parametrize("example", MANIFEST, ids=lambda e: e["name"])
def test_corpus_files_found(example):
    folder = CORPUS / example["name"]
    s = parse_script(folder / example["input"])
    assert not s.diagnostics
    reads = {f.path for f in s.files if f.mode == "read"}
    written = {f.path for f in s.files if f.mode == "write"}
    expected = set(example["files"]) - {example["input"]}
    assert expected <= reads
    assert reads - expected <= written  # anything else read was written by the script first


def test_an_unmatched_quote_is_an_error_at_its_line():
    script = parse_text('units lj\nprint "done\nprint don\'t\nprint "it is" # it\'s fine\nprint """\nmany lines\n"""\n')
    assert [(d.code, d.line) for d in script.diagnostics] == [
        ("parse.unmatched_quote", 2),
        ("parse.unmatched_quote", 3),
    ]
    assert "double" in script.diagnostics[0].message and "single" in script.diagnostics[1].message


def test_an_ampersand_before_a_blank_line_that_cuts_a_command_is_an_error():
    text = "units lj\nthermo_style custom step temp &\n\n  pe press\nrun 0 &\n\nrun 10\n"
    script = parse_text(text)
    assert [(d.code, d.line) for d in script.diagnostics] == [("parse.continuation", 2)]
    assert [c.words for c in script.commands][1:3] == [["thermo_style", "custom", "step", "temp"], ["pe", "press"]]
