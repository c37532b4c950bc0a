"""One command-line vocabulary: every flag has help, help shows defaults, aliases and comma lists."""

import argparse

import pytest

from visionlens.checks import FlatList, comma_list, count
from visionlens.cli import build_parser, main


def _walk(parser, path=()):
    """(command path, parser) for the parser and every sub-parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


def _installed(command: str) -> bool:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].prefix_chars != "\0"  # the not-installed pointer takes every word as it is


def test_every_optional_argument_of_every_command_has_help():
    missing = [f"visionlens {' '.join(path)} {'/'.join(action.option_strings)}"
               for path, parser in _walk(build_parser()) for action in parser._actions
               if action.option_strings and action.help is not argparse.SUPPRESS and not (action.help or "").strip()]
    assert not missing, missing


def test_the_walk_reaches_the_systems_commands():
    paths = {path for path, _ in _walk(build_parser())}
    assert ("evaluate",) in paths and ("concepts",) in paths
    for path in [("sata", "evaluate"), ("hsi-cd", "train"), ("pose", "train"), ("refer",), ("adapt",)]:
        if _installed(path[0]):
            assert path in paths


def test_every_parser_shows_defaults_in_its_help():
    for path, parser in _walk(build_parser()):
        if parser.prefix_chars != "\0":
            assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), path


def test_help_shows_defaults(capsys):
    assert main(["evaluate", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: world-cnn)" in out and "(default: gradcam)" in out and "(default: 100)" in out
    assert "during the run) (default: 0)" in out  # a zero default is shown (0 == False)
    assert "(default: None)" not in out and "(default: False)" not in out


def test_help_of_the_top_level_names_version_and_debug(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--version" in out and "--debug" in out


def test_evaluate_accepts_model_and_method_as_aliases():
    parse = build_parser().parse_args
    one = parse(["evaluate", "--model", "world-vit", "--method", "cam,gradcam"])
    other = parse(["evaluate", "--models", "world-vit", "--methods", "cam,gradcam"])
    assert one.models == other.models == "world-vit" and one.methods == other.methods == "cam,gradcam"
    assert not hasattr(one, "model") and not hasattr(one, "method")


@pytest.mark.parametrize("words,seeds", [
    (["0", "1", "2"], [0, 1, 2]), (["0,1,2"], [0, 1, 2]), (["0,1", "2"], [0, 1, 2]), (["7"], [7]),
])
def test_comma_list_and_spaces_agree(words, seeds):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=comma_list(count(minimum=0)), nargs="+", action=FlatList, default=[0])
    assert parser.parse_args(["--seeds", *words]).seeds == seeds
    assert parser.parse_args([]).seeds == [0]


@pytest.mark.parametrize("text", ["", ",", "0,,1", "a", "0,-1", "1.5"])
def test_comma_list_refuses_bad_items(text):
    parse = comma_list(count(minimum=0))
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_sata_batch_size_and_comma_seeds():
    if not _installed("sata"):
        pytest.skip("visionlens-sata is not installed")
    parse = build_parser().parse_args
    base = ["sata", "evaluate", "--out", "x.md"]
    assert parse([*base, "--batch-size", "8"]).batch == parse([*base, "--batch", "8"]).batch == 8
    args = parse([*base, "--seeds", "0,1,2", "--bs1-seeds", "3", "4"])
    assert args.seeds == [0, 1, 2] and args.bs1_seeds == [3, 4]
    assert parse([*base, "--seeds", "0", "1", "2"]).seeds == [0, 1, 2]
    assert parse(base).seeds == [0, 1] and parse(base).bs1_seeds == [0]


def test_adapt_seeds_with_spaces_or_commas():
    if not _installed("adapt"):
        pytest.skip("visionlens-adapt is not installed")
    parse = build_parser().parse_args
    assert parse(["adapt", "--seeds", "0,1,2"]).seeds == parse(["adapt", "--seeds", "0", "1", "2"]).seeds == [0, 1, 2]
    assert parse(["adapt"]).seeds == [0, 1, 2]


def test_bad_seed_list_is_one_line_exit_2(capsys):
    if not _installed("sata"):
        pytest.skip("visionlens-sata is not installed")
    assert main(["sata", "evaluate", "--out", "x.md", "--seeds", "0,x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "--seeds" in err


def test_device_defaults_to_auto_everywhere():
    wrong = [(path, action.default) for path, parser in _walk(build_parser()) for action in parser._actions
             if "--device" in action.option_strings and action.default != "auto"]
    assert not wrong, wrong


def test_a_misspelt_flag_is_named_by_its_command_with_the_flag_it_resembles(capsys):
    assert main(["explain", "photo.jpg", "--methd", "gradcam"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: visionlens explain: unrecognized arguments: --methd gradcam")
    assert "did you mean --method?" in err[0] and "(see visionlens explain --help)" in err[0]
    assert main(["concepts", "--clases=0"]) == 2
    err = capsys.readouterr().err
    assert "error: visionlens concepts: unrecognized arguments: --clases=0; did you mean --classes?" in err


def test_a_positional_argument_given_as_a_flag_says_how_to_give_it(capsys):
    assert main(["layers", "--model", "mobilenet_v2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "visionlens layers: unrecognized arguments: --model" in err[0]
    assert "the model is given without --model here (visionlens layers MODEL)" in err[0]


def test_an_unknown_flag_of_a_nested_command_names_that_command(capsys):
    if not _installed("pose"):
        pytest.skip("visionlens-refer is not installed")
    assert main(["pose", "train", "--no-such-flag"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: visionlens pose train: unrecognized arguments: --no-such-flag")
    assert "did you mean" not in err[0]


def test_visionlens_methods_prints_one_whole_sentence_per_method(capsys):
    """The summaries were the first docstring lines: cut mid-sentence, with formulas and internal notes."""
    from visionlens.methods.registry import REGISTRY

    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(REGISTRY)
    for info, line in zip(REGISTRY, lines):
        assert line.endswith(info.summary)
        assert "``" not in info.summary and "[" not in info.summary and len(info.summary) <= 120, info.summary
