"""data.py: loading with aliases, answer forms, bad rows, strict mode, dedup, templates, writing problems."""
import json
import sys
from pathlib import Path

import pytest

from data import (MAX_PROBLEM_CHARS, SYSTEM_PROMPT, Problem, format_prompt, load_problems, load_problems_report,
                  prompt_messages, write_problems)
from runtime import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _jsonl(tmp_path, rows, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("pfield", ["problem", "question", "prompt", "query"])
def test_problem_aliases(tmp_path, pfield):
    [p] = load_problems(_jsonl(tmp_path, [{pfield: "What is 1+1?", "answer": "2"}]))
    assert p.problem == "What is 1+1?" and p.answer == "2"


@pytest.mark.parametrize("afield", ["answer", "final_answer", "gold", "expected_answer"])
def test_answer_aliases(tmp_path, afield):
    [p] = load_problems(_jsonl(tmp_path, [{"problem": "x", afield: "7"}]))
    assert p.answer == "7"


def test_answer_from_last_boxed_of_solution(tmp_path):
    row = {"problem": "x", "solution": "First \\boxed{1}, then $\\boxed{\\frac{1}{2}}$."}
    [p] = load_problems(_jsonl(tmp_path, [row]))
    assert p.answer == "\\frac{1}{2}"


def test_gsm8k_answer_after_hashes(tmp_path):
    row = {"question": "q", "answer": "She sells 16 - 3 = 13.\n#### 1,018"}
    [p] = load_problems(_jsonl(tmp_path, [row]))
    assert p.answer == "1018"


def test_list_and_numeric_answers(tmp_path):
    rows = [{"problem": "a", "answer": ["2"]}, {"problem": "b", "answer": 27.0},
            {"problem": "c", "answer": 2.5}, {"problem": "d", "answer": ["6630.65\n", "6630\n"]}]
    a, b, c, d = load_problems(_jsonl(tmp_path, rows))
    assert (a.answer, b.answer, c.answer, d.answer) == ("2", "27", "2.5", "6630.65")
    assert d.meta["answer_alternatives"] == ["6630.65", "6630"]


def test_field_override(tmp_path):
    rows = [{"problem": "ignored", "answer": "no", "stem": "real text", "target": "5"}]
    [p] = load_problems(_jsonl(tmp_path, rows), problem_field="stem", answer_field="target")
    assert (p.problem, p.answer) == ("real text", "5")


def test_bad_rows_reported_and_skipped(tmp_path, capsys):
    rows = [{"problem": "ok", "answer": "1"}, {"problem": "", "answer": "1"}, {"problem": "no answer"},
            "{not json", [1, 2], {"problem": "ok2", "answer": "2"}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows))
    assert [p.problem for p in problems] == ["ok", "ok2"]
    assert [i for i, _ in report["bad"]] == [2, 3, 4, 5]  # line numbers, counted from 1 as editors do
    err = capsys.readouterr().err
    assert "skipped 4 of 6 rows" in err and "row 2: no problem text" in err and "row 3: no answer" in err


def test_strict_raises_naming_rows(tmp_path):
    with pytest.raises(DataError, match=r"1 of 2 rows of p.jsonl.*row 2: no answer"):
        load_problems(_jsonl(tmp_path, [{"problem": "a", "answer": "1"}, {"problem": "b"}]), strict=True)


def test_duplicates_kept_once_and_reported(tmp_path, capsys):
    rows = [{"problem": "What  is\n1+1?", "answer": "2"}, {"problem": "What is 1+1?", "answer": "2"},
            {"problem": "other", "answer": "3"}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows))
    assert len(problems) == 2 and report["duplicates"] == [(2, 1)]
    assert "1 duplicate problems kept once" in capsys.readouterr().err


def test_ids_from_field_or_row(tmp_path):
    a = load_problems(_jsonl(tmp_path, [{"id": 5, "problem": "a", "answer": "1"}]))
    b = load_problems(_jsonl(tmp_path, [{"problem": "a", "answer": "1"}, {"problem": "b", "answer": "1"}], "q.jsonl"))
    assert a[0].id == "5" and [p.id for p in b] == ["q.jsonl:1", "q.jsonl:2"]


# ---- bad input never passes silently (issue 24): every row not loaded is reported, with its row from 1 ----

ROW_A = '{"problem": "What is 1+1?", "answer": "2"}'


def test_byte_order_mark_is_accepted(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + ROW_A.encode() + b"\n")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf[" + ROW_A.encode() + b"]")
    for name in ("bom.jsonl", "bom.json"):
        problems, report = load_problems_report(tmp_path / name, verbose=False)
        assert [(p.problem, p.answer) for p in problems] == [("What is 1+1?", "2")] and report["bad"] == []


def test_malformed_json_line_reported_with_its_error_and_line(tmp_path, capsys):
    # line 2 is blank (editors count it); line 3 misses a comma before "answer", at column 17
    path = _jsonl(tmp_path, [ROW_A, "", '{"problem": "b" "answer": "3"}', '{"problem": "c", "answer": "4"}'])
    problems, report = load_problems_report(path)
    assert [p.problem for p in problems] == ["What is 1+1?", "c"]
    assert report["bad"] == [(3, "invalid JSON (Expecting ',' delimiter at column 17)")]
    assert "row 3: invalid JSON (Expecting ',' delimiter at column 17)" in capsys.readouterr().err
    assert [p.meta["row"] for p in problems] == [1, 4]


def test_json_file_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "p.json"
    # line 3: two spaces, then the object; its missing comma sits before "answer", at column 19
    path.write_text('[\n  {"problem": "a", "answer": 1},\n  {"problem": "b" "answer": 2}\n]')
    with pytest.raises(DataError, match=r"p\.json: not valid JSON: Expecting ',' delimiter at line 3 column 19"):
        load_problems(path)


def test_non_utf8_bytes_rejected_naming_file_row_and_byte_offset(tmp_path):
    first, second = ROW_A.encode() + b"\n", b'{"problem": "caf\xe9 prices", "answer": "2"}\n'  # latin-1 e-acute
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(first + second)
    offset = len(first) + len(b'{"problem": "caf')
    with pytest.raises(DataError, match=rf"latin1\.jsonl: row 2 is not UTF-8 text \(byte 0xe9 at offset {offset} of"):
        load_problems(path)


def test_duplicate_ids_get_a_visible_suffix(tmp_path, capsys):
    rows = [{"id": "a", "problem": "p1", "answer": "1"}, {"id": "b", "problem": "p2", "answer": "2"},
            {"id": "a", "problem": "p3", "answer": "3"}, {"id": "a#2", "problem": "p4", "answer": "4"},
            {"id": "a", "problem": "p5", "answer": "5"}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows))
    # the file's own "a#2" keeps its id, so the repeats of "a" become a#3 and a#4
    assert [p.id for p in problems] == ["a", "b", "a#3", "a#2", "a#4"]
    assert report["renamed_ids"] == [(3, "a", "a#3"), (5, "a", "a#4")]
    err = capsys.readouterr().err
    assert "2 rows repeat an earlier id and were renamed: row 3: 'a' -> 'a#3', row 5: 'a' -> 'a#4'" in err


def test_conflicting_answers_for_one_problem_are_reported(tmp_path, capsys):
    rows = [{"problem": "What is 1+1?", "answer": "2"}, {"problem": "What  is 1+1?", "answer": "3"},
            {"problem": "half of 1", "answer": "1/2"}, {"problem": "half of 1", "answer": "\\frac{1}{2}"}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows))
    assert [(p.problem, p.answer) for p in problems] == [("What is 1+1?", "2"), ("half of 1", "1/2")]
    assert report["duplicates"] == [(2, 1), (4, 3)]
    assert report["conflicts"] == [(2, 1, "p.jsonl:1", "3", "2")]  # 1/2 and \frac{1}{2} are the same answer
    assert ("1 of them answer differently; the first answer is kept: row 2 answers '3', row 1 (id 'p.jsonl:1') '2'"
            in capsys.readouterr().err)


def test_overlong_problem_text_is_skipped_and_reported(tmp_path, capsys):
    rows = [{"problem": "x" * MAX_PROBLEM_CHARS, "answer": "1"}, {"problem": "y" * (MAX_PROBLEM_CHARS + 1), "answer": "2"},
            {"problem": "short", "answer": "3"}]
    path = _jsonl(tmp_path, rows)
    problems, report = load_problems_report(path)
    assert [p.answer for p in problems] == ["1", "3"]
    assert report["bad"] == [(2, "problem text of 20,001 characters, over the cap of 20,000 (max_chars)")]
    assert "skipped 1 of 3 rows: row 2: problem text of 20,001 characters" in capsys.readouterr().err
    assert [p.answer for p in load_problems(path, max_chars=5, verbose=False)] == ["3"]
    with pytest.raises(DataError, match="row 2: problem text of 20,001 characters"):
        load_problems(path, strict=True)


def test_integer_answer_past_float_range_is_its_digits(tmp_path):
    [p] = load_problems(_jsonl(tmp_path, ['{"problem": "big", "answer": 1' + "0" * 400 + "}"]))
    assert p.answer == "1" + "0" * 400


def test_an_id_that_is_not_a_string_or_number_is_replaced_and_reported(tmp_path, capsys):
    rows = [{"id": [1, 2], "problem": "a", "answer": "1"}, {"id": 7, "problem": "b", "answer": "2"}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows))
    assert [p.id for p in problems] == ["p.jsonl:1", "7"] and report["odd_ids"] == [(1, "list")]
    assert "1 rows have an id that is neither a string nor a number" in capsys.readouterr().err


def test_limit_is_seeded_subset(tmp_path):
    path = _jsonl(tmp_path, [{"problem": f"p{i}", "answer": str(i)} for i in range(50)])
    a = load_problems(path, limit=10, seed=1)
    assert len(a) == 10 and [p.id for p in a] == [p.id for p in load_problems(path, limit=10, seed=1)]
    assert [p.id for p in a] != [p.id for p in load_problems(path, limit=10, seed=2)]


def test_json_list_and_missing_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"problem": "a", "answer": 3}]))
    assert load_problems(path)[0].answer == "3"
    with pytest.raises(DataError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")


def test_hub_id_without_network_fails_fast_with_advice():
    with pytest.raises(DataError, match="local"):
        load_problems("nobody/no-such-dataset-for-saerl")


def test_write_problems_round_trip(tmp_path):
    ps = [Problem("t-1", "What is 2+2?", "4", {"topic": "add", "difficulty": 1})]
    write_problems(tmp_path / "w.jsonl", ps)
    [p] = load_problems(tmp_path / "w.jsonl")
    assert (p.id, p.problem, p.answer, p.meta["topic"], p.meta["difficulty"]) == ("t-1", "What is 2+2?", "4", "add", 1)


def test_templates():
    class Tok:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "<chat>" + messages[0]["content"] + "</chat>"

    q = format_prompt("What is 1+1?", None, "qwen-math")
    assert q == ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                 "<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompt("P", None, "plain") == "P\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
    assert format_prompt("P", Tok(), "chat").startswith("<chat>P\nPlease reason")
    assert format_prompt("P", None, "chatml") == "<|im_start|>user\nP<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        format_prompt("P", None, "nope")
    with pytest.raises(ValueError, match="chat_template"):
        format_prompt("P", None, "chat")


# ---- integration: every file in ../shared/data loads with the right counts and answers ----

EXPECTED = {  # file: (rows kept, first answer, duplicates, bad rows) counted from the files by hand
    "train/math_train.jsonl": (7469, "0", 1, 4),  # rows 887, 1010 (answer null), 5329, 5331 (empty)
    "train/aime_1983_2023.jsonl": (975, "60", 0, 0),
    "bench/aime24.jsonl": (30, "204", 0, 0),
    "bench/amc23.jsonl": (40, "27", 0, 0),
    "bench/amc22_23.jsonl": (83, "142", 0, 0),
    "bench/minerva_math.jsonl": (272, "9.6", 0, 0),
    "bench/olympiadbench.jsonl": (675, "2", 0, 0),
    "bench/gsm8k_test.jsonl": (1319, "18", 0, 0),
}


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_data_loads(name):
    rows, first, dups, bad = EXPECTED[name]
    problems, report = load_problems_report(SHARED / name, verbose=False)
    assert len(report["bad"]) == bad
    assert len(report["duplicates"]) == dups
    assert len(problems) == rows and problems[0].answer == first
    assert all(p.answer and p.problem for p in problems)


# ---- the RL trainers' dataset formats (issue 23): TRL conversational rows, verl rows, nested fields ----


def _chat(*turns):
    return [{"role": role, "content": content} for role, content in turns]


def test_trl_conversational_rows_read_the_last_user_turn(tmp_path):
    rows = [{"prompt": _chat(("system", "Reason step by step."), ("user", "What is 2+3?")),
             "solution": "2+3 is \\boxed{5}."},
            {"prompt": _chat(("user", "warm-up: 1+1?"), ("assistant", "2"), ("user", "Now 4*6?")), "answer": "24"},
            {"prompt": _chat(("system", "no question here"))}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows, "trl.jsonl"), verbose=False)
    assert [(p.problem, p.answer) for p in problems] == [("What is 2+3?", "5"), ("Now 4*6?", "24")]
    assert report["bad"] == [(3, "the prompt is a message list without a user turn whose content is text")]


def test_message_content_given_as_text_parts_is_joined(tmp_path):
    parts = [{"type": "text", "text": "What is "}, {"type": "image"}, {"type": "text", "text": "7-2?"}]
    [p] = load_problems(_jsonl(tmp_path, [{"prompt": [{"role": "user", "content": parts}], "answer": 5}]))
    assert (p.problem, p.answer) == ("What is 7-2?", "5")


def verl_row(question, truth, index):
    return {"data_source": "openai/gsm8k", "prompt": _chat(("user", question)), "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "train", "index": index, "answer": f"work... #### {truth}"}}


def test_verl_rows_read_ground_truth_and_keep_the_rest_in_meta(tmp_path):
    rows = [verl_row("Tom has 3 apples and eats 1. How many are left?", "2", 0),
            verl_row("What is 10 / 4?", "2.5", 1),
            {"data_source": "x", "prompt": _chat(("user", "no truth")), "reward_model": {"style": "rule"}}]
    problems, report = load_problems_report(_jsonl(tmp_path, rows, "verl.jsonl"), verbose=False)
    assert [(p.problem, p.answer) for p in problems] == [("Tom has 3 apples and eats 1. How many are left?", "2"),
                                                         ("What is 10 / 4?", "2.5")]
    assert [i for i, _ in report["bad"]] == [3]
    assert problems[1].meta["data_source"] == "openai/gsm8k" and problems[1].meta["extra_info"]["index"] == 1


def test_dotted_field_paths_override_the_aliases(tmp_path):
    row = {"prompt": "top-level text", "answer": "top", "reward_model": {"ground_truth": "9"},
           "extra_info": {"question": "nested text"}}
    [p] = load_problems(_jsonl(tmp_path, [row]), problem_field="extra_info.question",
                        answer_field="reward_model.ground_truth")
    assert (p.problem, p.answer) == ("nested text", "9")
    [q] = load_problems(_jsonl(tmp_path, [{"problem": "p", "a.b": "flat"}], "flat.jsonl"), answer_field="a.b")
    assert q.answer == "flat"  # a key that itself holds a dot wins over the path


def test_verl_parquet_reads_like_its_jsonl(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [verl_row("What is 6*7?", "42", 0), verl_row("What is 9-4?", "5", 1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    problems = load_problems(tmp_path / "train.parquet", verbose=False)
    assert [(p.id, p.problem, p.answer) for p in problems] == [("train.parquet:1", "What is 6*7?", "42"),
                                                               ("train.parquet:2", "What is 9-4?", "5")]


def test_parquet_without_pyarrow_says_what_to_do(tmp_path, monkeypatch):
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"t\.parquet needs pyarrow: pip install pyarrow \(or convert it to \.jsonl\)"):
        load_problems(tmp_path / "t.parquet")


@pytest.mark.parametrize("template", ["qwen-math", "chatml", "chat"])
def test_prompt_messages_render_to_the_template_text(template):
    import toy

    tok = toy.char_tokenizer()  # its chat template is plain ChatML (jinja), as Qwen's without tools
    rendered = tok.apply_chat_template(prompt_messages("What is 1+1?", template), tokenize=False,
                                       add_generation_prompt=True)
    expected = {"qwen-math": format_prompt("What is 1+1?", None, "qwen-math"),  # written out by hand in data.py
                "chatml": format_prompt("What is 1+1?", None, "chatml"),
                "chat": f"<|im_start|>user\nWhat is 1+1?\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>assistant\n"}
    assert rendered == expected[template]


def test_plain_template_stays_a_string():
    assert prompt_messages("P", "plain") == "P\nPlease reason step by step, and put your final answer within \\boxed{}.\n"
