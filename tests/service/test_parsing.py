"""The root model's response parser (service/rlm/parsing.py), table by table.

What the engine relies on (service/rlm/engine.py):
- ``code_blocks``: the complete ```repl blocks it runs, in order (other fences never run);
- ``final_in_text``: a FINAL(...) / FINAL_VAR(name) line in the prose, checked only when no
  block answered; FINAL inside a code block is code (the sandbox defines FINAL), not text;
- ``has_unclosed_block``: a cut-off ```repl block, answered with the CUT_OFF prompt;
- ``strip_code``: the prose without fences, the partial (or forced) answer.

The cases of four bugs found in review (a FINAL inside a cut-off block taken as the answer,
fenced code inside an answer dropped, indented fences, \\r\\n line ends) are here too.
"""

from __future__ import annotations

import ast

import pytest

from service.rlm.parsing import (
    FinalInText,
    code_blocks,
    final_in_text,
    has_unclosed_block,
    strip_code,
)


def final(value: str) -> FinalInText:
    return FinalInText("final", value)


def final_var(name: str) -> FinalInText:
    return FinalInText("final_var", name)


# ---- code_blocks ------------------------------------------------------------------------

CODE_BLOCKS = [
    pytest.param("", [], id="empty-text"),
    pytest.param("Just prose, no code.", [], id="prose-only"),
    pytest.param("```repl\nx = 1\n```", ["x = 1\n"], id="one-block"),
    pytest.param(
        "Look first.\n```repl\nprint(len(context))\n```\nThen:\n```repl\ny = 2\nprint(y)\n```\n",
        ["print(len(context))\n", "y = 2\nprint(y)\n"],
        id="two-blocks-in-order",
    ),
    pytest.param(
        "```repl\na\n```\n```repl\nb\n```\n```repl\nc\n```",
        ["a\n", "b\n", "c\n"],
        id="three-adjacent-blocks",
    ),
    pytest.param("```repl\n```", [""], id="empty-block"),
    pytest.param("```repl\n\n\n```", ["\n\n"], id="blank-lines-kept"),
    # Only ```repl runs: the prompt asks for it, and NO_CODE_NO_ANSWER names it.
    pytest.param("```python\nx = 1\n```", [], id="python-fence-not-run"),
    pytest.param("```\nx = 1\n```", [], id="bare-fence-not-run"),
    pytest.param("```py\nx = 1\n```", [], id="py-fence-not-run"),
    pytest.param("```REPL\nx = 1\n```", [], id="upper-case-repl-not-run"),
    pytest.param("```repl python\nx = 1\n```", [], id="repl-with-extra-info-word"),
    pytest.param(
        "```python\nnot_run()\n```\n```repl\nrun()\n```", ["run()\n"], id="repl-among-others"
    ),
    # Whitespace around the fence markers.
    pytest.param("``` repl\nx = 1\n```", ["x = 1\n"], id="space-before-info"),
    pytest.param("```repl  \t\nx = 1\n```  \t", ["x = 1\n"], id="trailing-whitespace"),
    pytest.param("\t```repl\nx = 1\n\t```", ["x = 1\n"], id="tab-indented-fence"),
    pytest.param("```repl\nx = 1\n    ```", ["x = 1\n"], id="indented-closing-fence"),
    pytest.param(
        "```repl\nfor i in range(3):\n    print(i)\n```",
        ["for i in range(3):\n    print(i)\n"],
        id="code-indentation-kept",
    ),
    # A fence only opens at a line start, and only a bare ``` line closes it (markdown).
    pytest.param("See ```repl\nx = 1\n```", [], id="fence-mid-line-is-not-a-fence"),
    pytest.param("```repl\nx = 1\n``` done", [], id="closing-fence-with-text-does-not-close"),
    pytest.param(
        "```repl\ns = '''\n```\n'''\n```", ["s = '''\n"], id="first-bare-fence-line-closes"
    ),
    pytest.param("````repl\nx = 1\n````", [], id="four-backticks-not-a-repl-fence"),
    pytest.param("```repl\nx = 1", [], id="unclosed-block-not-returned"),
    pytest.param("```repl\na\n```\n```repl\nb", ["a\n"], id="complete-then-cut-off"),
    pytest.param("```repl\nFINAL(42)\n```", ["FINAL(42)\n"], id="final-call-is-code"),
]


@pytest.mark.parametrize(("text", "expected"), CODE_BLOCKS)
def test_code_blocks(text: str, expected: list[str]) -> None:
    assert code_blocks(text) == expected


# ---- has_unclosed_block -----------------------------------------------------------------

UNCLOSED = [
    pytest.param("", False, id="empty-text"),
    pytest.param("prose", False, id="prose-only"),
    pytest.param("```repl\nx = 1\n```", False, id="closed"),
    pytest.param("```repl\na\n```\n```repl\nb\n```", False, id="two-closed"),
    pytest.param("```repl\nx = 1", True, id="cut-off"),
    pytest.param("```repl\n", True, id="cut-off-right-after-fence"),
    pytest.param("```repl", True, id="cut-off-at-fence"),
    pytest.param("```repl\na\n```\n```repl\nb = [", True, id="closed-then-cut-off"),
    pytest.param("```repl\nx = 1\n``` trailing", True, id="closing-fence-with-text"),
    pytest.param("  ```repl  \nx = 1", True, id="indented-cut-off"),
    # Only a cut-off ```repl block matters: nothing else would have run.
    pytest.param("```python\nx = 1", False, id="cut-off-python-fence"),
    pytest.param("```\nx = 1", False, id="cut-off-bare-fence"),
    pytest.param("Use a ```repl block.", False, id="fence-mentioned-mid-line"),
]


@pytest.mark.parametrize(("text", "expected"), UNCLOSED)
def test_has_unclosed_block(text: str, expected: bool) -> None:
    assert has_unclosed_block(text) is expected


# ---- final_in_text ----------------------------------------------------------------------

FINALS = [
    pytest.param("", None, id="empty-text"),
    pytest.param("  \n\t\n", None, id="whitespace-only"),
    pytest.param("I still need to look at the context.", None, id="no-final"),
    pytest.param("FINAL(42)", final("42"), id="simple"),
    pytest.param("I checked twice.\nFINAL(42)\n", final("42"), id="after-prose"),
    pytest.param("   FINAL(  42  )  ", final("42"), id="inner-whitespace-stripped"),
    pytest.param("\tFINAL(42)", final("42"), id="tab-indented"),
    pytest.param("FINAL(42) and that is all.", final("42"), id="prose-after-on-same-line"),
    pytest.param("FINAL(f(g(1), (2)))", final("f(g(1), (2))"), id="nested-parens"),
    pytest.param("FINAL(a (b (c) d) e)\nmore", final("a (b (c) d) e"), id="deeply-nested"),
    pytest.param(
        "Done.\nFINAL(line one\nline two\nline three)",
        final("line one\nline two\nline three"),
        id="multi-line",
    ),
    pytest.param(
        "FINAL(The totals:\n- a (3)\n- b (4)\n)", final("The totals:\n- a (3)\n- b (4)"), id="list"
    ),
    pytest.param('FINAL("hello")', final("hello"), id="double-quoted-unquoted"),
    pytest.param("FINAL('hello')", final("hello"), id="single-quoted-unquoted"),
    pytest.param('FINAL("""a "b" c""")', final('a "b" c'), id="triple-quoted-unquoted"),
    pytest.param('FINAL("""l1\nl2""")', final("l1\nl2"), id="triple-quoted-multi-line"),
    pytest.param('FINAL("a" and "b")', final('"a" and "b"'), id="two-strings-keep-quotes"),
    pytest.param('FINAL("a ) b")', final("a ) b"), id="paren-inside-string"),
    pytest.param("FINAL('x (y')", final("x (y"), id="open-paren-inside-string"),
    pytest.param("FINAL(it's done (really))", final("it's done (really)"), id="apostrophe"),
    pytest.param(
        "FINAL(the users' names (all))", final("the users' names (all)"), id="plural-apostrophe"
    ),
    pytest.param("FINAL(It is ' odd)", final("It is ' odd"), id="lone-quote-after-space"),
    pytest.param("FINAL(**42**)", final("**42**"), id="markdown-kept"),
    pytest.param("FINAL()", final(""), id="empty-parens"),
    # Cut off before the closing parenthesis: everything to the end is the best answer.
    pytest.param("FINAL(the answer is 42", final("the answer is 42"), id="unbalanced-to-end"),
    pytest.param("FINAL(a (b)\nc  \n", final("a (b)\nc"), id="unbalanced-multi-line"),
    pytest.param("FINAL(", None, id="unbalanced-empty"),
    pytest.param("FINAL(\n  \n", None, id="unbalanced-blank"),
    # Only at a line start, spelled exactly.
    pytest.param("The answer: FINAL(42)", None, id="not-at-line-start"),
    pytest.param("I will call `FINAL(x)` later.", None, id="inline-code-mention"),
    pytest.param("final(42)", None, id="lower-case"),
    pytest.param("FINAL (42)", None, id="space-before-paren"),
    pytest.param("FINALLY(42)", None, id="longer-word"),
    pytest.param("FINAL_ANSWER(42)", None, id="other-suffix"),
    # FINAL_VAR(name)
    pytest.param("FINAL_VAR(result)", final_var("result"), id="var"),
    pytest.param("FINAL_VAR( result )", final_var("result"), id="var-spaces"),
    pytest.param("FINAL_VAR('result')", final_var("result"), id="var-single-quoted"),
    pytest.param('FINAL_VAR("result")', final_var("result"), id="var-double-quoted"),
    pytest.param("FINAL_VAR(_x9)", final_var("_x9"), id="var-underscore-digits"),
    pytest.param("Stored it.\n  FINAL_VAR(out)  ", final_var("out"), id="var-indented"),
    pytest.param("FINAL_VAR(out) is the answer", final_var("out"), id="var-prose-after"),
    pytest.param("FINAL_VAR(1abc)", None, id="var-not-an-identifier"),
    pytest.param("FINAL_VAR(a.b)", None, id="var-attribute-not-a-name"),
    pytest.param("FINAL_VAR()", None, id="var-empty"),
    pytest.param("Then FINAL_VAR(out)", None, id="var-not-at-line-start"),
    # Both forms, and repeats: the first one wins.
    pytest.param("FINAL_VAR(x)\nFINAL(7)", final_var("x"), id="var-before-final"),
    pytest.param("FINAL(7)\nFINAL_VAR(x)", final("7"), id="final-before-var"),
    pytest.param("FINAL(1)\nFINAL(2)", final("1"), id="first-final-wins"),
    # Inside a closed fence it is code (run by the sandbox), not a text answer.
    pytest.param("```repl\nFINAL(42)\n```", None, id="final-in-repl-block"),
    pytest.param("```repl\nx = 1\nFINAL_VAR(x)\n```", None, id="var-in-repl-block"),
    pytest.param("```python\nFINAL(42)\n```", None, id="final-in-python-block"),
    pytest.param("```\nFINAL(42)\n```", None, id="final-in-bare-fence"),
    pytest.param("```repl\nFINAL(1)\n```\nFINAL(2)", final("2"), id="code-final-then-text-final"),
    pytest.param(
        "```repl\nFINAL(1)\n```\nFINAL_VAR(y)", final_var("y"), id="code-final-then-text-var"
    ),
    pytest.param("FINAL_VAR(y)\n```repl\nFINAL(1)\n```", final_var("y"), id="text-var-then-code"),
    pytest.param("```repl\nx = 1\n```\nFINAL(7)", final("7"), id="block-then-final"),
    pytest.param(
        '```python\nprint(")")\n```\nFINAL(ok)', final("ok"), id="parens-in-fence-ignored"
    ),
]


@pytest.mark.parametrize(("text", "expected"), FINALS)
def test_final_in_text(text: str, expected: FinalInText | None) -> None:
    assert final_in_text(text) == expected


def test_escaped_quote_does_not_end_the_string() -> None:
    # The ")" after an escaped quote is inside the string, so the answer goes on past it.
    found = final_in_text('FINAL("a \\" ) b")\nmore')
    assert found is not None and found.kind == "final"
    assert found.value.endswith(') b"') and "more" not in found.value


# ---- strip_code -------------------------------------------------------------------------

STRIP = [
    pytest.param("", "", id="empty-text"),
    pytest.param("  just prose  \n", "just prose", id="prose-stripped"),
    pytest.param("```repl\nx = 1\n```", "", id="only-code"),
    pytest.param("Before.\n```repl\nx = 1\n```\nAfter.", "Before.\n\nAfter.", id="prose-around"),
    pytest.param("A\n```python\np\n```\nB\n```\nq\n```\nC", "A\n\nB\n\nC", id="every-fence-kind"),
    pytest.param(
        "The answer is 42.\n```repl\nx = [", "The answer is 42.\n```repl\nx = [", id="cut-off-kept"
    ),
    pytest.param("FINAL(42)\n```repl\nprint(1)\n```", "FINAL(42)", id="final-line-kept"),
]


@pytest.mark.parametrize(("text", "expected"), STRIP)
def test_strip_code(text: str, expected: str) -> None:
    assert strip_code(text) == expected


@pytest.mark.parametrize(
    "text", [p.values[0] for p in CODE_BLOCKS], ids=[p.id for p in CODE_BLOCKS]
)
def test_no_block_the_engine_runs_survives_in_the_partial_answer(text: str) -> None:
    """What ran as code is never handed to the user as prose (the partial answer)."""
    for block in code_blocks(text):
        if block.strip():
            assert block.strip() not in strip_code(text)


# ---- known bugs: the right behaviour, failing today ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            'Summing up.\n```repl\nnotes = llm_query_batched(prompts)\nFINAL(llm_query(f"Sum {notes}")',
            id="final-call-cut-off",
        ),
        pytest.param(
            "```repl\nresult = compute()\nFINAL_VAR(result)\nprint(", id="final-var-cut-off"
        ),
    ],
)
def test_final_inside_a_cut_off_repl_block_is_not_an_answer(text: str) -> None:
    assert has_unclosed_block(text)
    assert final_in_text(text) is None


def test_fenced_code_inside_final_is_part_of_the_answer() -> None:
    text = "Here it is.\nFINAL(Use this function:\n```python\ndef f():\n    return 1\n```\nThen call f().)"
    found = final_in_text(text)
    assert found is not None and found.kind == "final"
    assert "def f():\n    return 1" in found.value
    assert found.value.endswith("Then call f().")


def test_indented_fence_yields_runnable_code() -> None:
    text = "1. Count them:\n   ```repl\n   for i in range(2):\n       print(i)\n   ```\n"
    [block] = code_blocks(text)
    ast.parse(block)  # IndentationError today
    assert "for i in range(2):\n    print(i)" in block


def test_crlf_line_endings() -> None:
    text = "Look.\r\n```repl\r\nprint(1)\r\n```\r\n"
    assert [b.strip() for b in code_blocks(text)] == ["print(1)"]
    assert not has_unclosed_block(text)
