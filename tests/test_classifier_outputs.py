"""The classifiers' outputs, pinned bit for bit: features, learned-v2's cues and every shipped
classifier's score on varied bodies. Their code runs on every routed request and is tuned for speed
(classifier/features.py, heuristic.py, cues.py); a tuning must not move a score, so a change here is
either a bug or a deliberate change of the classifiers (then re-pin, and say so in the changelog).

The expected values were computed by the code before the tuning of issue 9; text and cues are pinned
by digest, scores by their exact bits (float.hex)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from classifier import extract_features, load_classifier
from classifier.cues import cue_vector

LONG = "Explain why the sum of the first n odd numbers is n^2, step by step. " * 130  # > 8,000 chars
BODIES = [
    {
        "model": "auto",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 16,
    },
    {"messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": ""}]},
    {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Write a poem about the sea."},
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": "```python\ndef f(x):\n    return x + 1\n```\nWhy does this fail? import os; class A: pass => (); };",
            }
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": "Prove that \u221a2 is irrational. Let x = a/b, x^2 = 2, a \u2264 b \u00b1 1, 3 \u00d7 4 \u00f7 2 \u2211 \u222b \u2265",
            }
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Compute $\\frac{1}{2} + \\sqrt{x_{1}^{2}}$ and solve for x."}
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Which is larger?\nA. 3\nB. 4\nC. 5\nD. 6\nOptions: pick one"}
        ]
    },
    {"messages": [{"role": "user", "content": "Which one?\na) red\nb) blue\nc) green\nd) none"}]},
    {
        "messages": [
            {
                "role": "user",
                "content": "Create a design for a story: you must use exactly 100 words, at least 3 bullet points, only JSON format, without adjectives.",
            }
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": "Implement the algorithm in Python, SQL and JavaScript: a function and a program of code.",
            }
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": "How many steps? Analyze, compare the tradeoffs, debug, refactor and optimise the architecture; justify.",
            }
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": "caf\u00e9 na\u00efve \u03a3\u0399\u03a3 \u200b zero-width \u4e2d\u6587 \u0661\u0662\u0663 \x00 control",
            }
        ]
    },
    {"messages": [{"role": "user", "content": "= = = = ^ ^ ^ ^ ``` ``` ``` ``` def def def def "}]},
    {"messages": [{"role": "user", "content": "Let x = 1, y = 2 and z = 3; what is x + y + z?"}]},
    {
        "messages": [
            {"role": "user", "content": "Simplify a^b^c^d, then think step-by-step about the trade-offs."}
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Why? Why? Why? Why? explain, explain, explain: how many, how many"}
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "\tTabs\r\nand\rcarriage\x1creturns\x1f 12345 67890 3.14159 2,718"}
        ]
    },
    {"messages": [{"role": "user", "content": LONG}]},
    {
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "Why? Explain in detail."},
        ]
    },
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe this image"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                ],
            }
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "the task"},
            {"role": "assistant", "content": None, "tool_calls": []},
            {
                "role": "user",
                "content": [{"type": "tool_result", "content": [{"type": "text", "text": "42"}]}],
            },
        ]
    },
    {
        "messages": [{"role": "user", "content": [{"type": "tool_result", "content": "only a result"}]}],
        "system": [{"type": "text", "text": "system blocks"}],
    },
    {
        "messages": [{"role": "user", "content": "call a tool"}],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
    },
    {
        "messages": [{"role": "user", "content": "json please"}],
        "response_format": {"type": "json_object"},
        "max_tokens": 4000,
    },
    {
        "messages": [{"role": "user", "content": "schema please"}],
        "response_format": {"type": "json_schema", "json_schema": {}},
        "max_completion_tokens": 3,
    },
    {
        "messages": [{"role": "user", "content": "odd format"}],
        "response_format": {"type": "text"},
        "max_tokens": True,
    },
    {"messages": [{"role": "user", "content": "legacy functions"}], "functions": [{"name": "g"}]},
    {"messages": ["not an object", {"role": "user"}, {"role": "tool", "content": "tool output"}]},
    {
        "messages": [{"role": "developer", "content": "rules"}]
        + [{"role": "user", "content": f"turn {i}"} for i in range(12)]
    },
    {"prompt": "Once upon a time, write a story"},
    {"prompt": ["Translate: hello", 7, "and goodbye"], "max_tokens": 2500},
    {"prompt": 5},
    {"messages": {"role": "user"}, "prompt": "dict messages fall back to the prompt"},
    {},
    {"messages": []},
    {
        "system": "Anthropic system prompt",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Summarize: the cat sat."}]}],
        "max_tokens": 1024,
    },
]

# (total_chars, turns, has_tools, response_format, max_tokens, text digest, cues digest,
#  heuristic, learned-v1 and learned-v2 scores)
# fmt: off
EXPECTED: list[tuple[Any, ...]] = [
    (30, 1, False, 'text', 16, '115049a298532be2', '1b0b64cb64747573',
     '0x1.a4849ff554cd8p-4', '0x1.5586dd3b28cb8p-3', '0x1.7e49052ae0df8p-3'),
    (2, 1, False, 'text', None, '8f434346648f6b96', '44ba0ee8413635e0',
     '0x1.9962e515a1a1bp-4', '0x1.7adcb1057d05cp-5', '0x1.63e89ccc71a9bp-4'),
    (0, 1, False, 'text', None, 'e3b0c44298fc1c14', 'a5bc11c346d84841',
     '0x1.9893f80876febp-4', '0x1.81e50dade6034p-2', '0x1.eccd9b3df79c3p-5'),
    (41, 1, False, 'text', None, 'f68aee707ba0a23f', 'e718e129dbed29f7',
     '0x1.a8ccf34949b6fp-4', '0x1.e5c5bc02e05acp-3', '0x1.534118537e351p-2'),
    (95, 1, False, 'text', None, 'a71def5da6e77cbf', '5a01a475c35174b2',
     '0x1.4fe3d2724666ep-1', '0x1.21aa2b0512770p-1', '0x1.2c2c4a7120be3p-1'),
    (77, 1, False, 'text', None, '7a39458e393b4b4e', '19fdbf2623f5c458',
     '0x1.a20b3b2102610p-2', '0x1.65c844002be6bp-2', '0x1.39add7100144ap-1'),
    (57, 1, False, 'text', None, 'ea7d85b43661d28e', '544a7efaa1ada7de',
     '0x1.018971f0d4f5fp-2', '0x1.ab9ed1e81265fp-2', '0x1.45dc81cb0c18ap-1'),
    (54, 1, False, 'text', None, 'efb7bab705145cb3', 'bf9affa08586229c',
     '0x1.adcc843b68357p-4', '0x1.4bebfd1746929p-2', '0x1.07158ff63ae9fp-1'),
    (42, 1, False, 'text', None, '309603d22771ac86', '68f32b1c94b091b4',
     '0x1.a92ffd9f0ab3fp-4', '0x1.e59abfdd20679p-2', '0x1.e7903d4642789p-3'),
    (124, 1, False, 'text', None, '92e5ac2e527646d1', '360b4db6aa2eba22',
     '0x1.7c53d1e01027ep-3', '0x1.50d33d6c1b3f9p-2', '0x1.6859b8adaf7b7p-1'),
    (88, 1, False, 'text', None, 'b0a8128b0408eb4e', 'fdbd3ac816ac33ba',
     '0x1.724f3469f03d0p-3', '0x1.eb380494d9f96p-3', '0x1.b7b7974e78cc2p-2'),
    (103, 1, False, 'text', None, '6f953d84014f46a2', 'f1be5334a6d2b2da',
     '0x1.b486ea7fa128ap-2', '0x1.0dbabc8bdfc9ap-2', '0x1.50ac87a281bbep-2'),
    (44, 1, False, 'text', None, 'f112b11c88768ab7', '0b285c8260ac51a7',
     '0x1.a9f5c33a172d8p-4', '0x1.8b6c20463d629p-2', '0x1.376e7de61e1aap-2'),
    (48, 1, False, 'text', None, 'b16ad5fece332a9c', 'ee0275c250b332d7',
     '0x1.7b51574cc5d1bp-1', '0x1.55728002a454ep-1', '0x1.2e555645311dap-2'),
    (46, 1, False, 'text', None, 'af2003117c5c1a66', '897e8efb1981823f',
     '0x1.849efc5ef785dp-3', '0x1.71b6a64a8739cp-2', '0x1.0bbd4ec298272p-1'),
    (63, 1, False, 'text', None, 'c772614f913928c2', '3b2c30d6f06de5b8',
     '0x1.c42ef0076e322p-2', '0x1.2aa76f9c0499bp-2', '0x1.1816adc02cc05p-2'),
    (65, 1, False, 'text', None, 'a8c38905627f99ba', 'afd3f5e275907b87',
     '0x1.21233d6adf404p-2', '0x1.82069c8b0a7f5p-2', '0x1.416a04dd47d40p-2'),
    (54, 1, False, 'text', None, 'd311969e026ef9b7', 'cfcae7cba937af41',
     '0x1.adcc843b68357p-4', '0x1.47c919018871ep-2', '0x1.5b7ae783d3bcfp-1'),
    (8970, 1, False, 'text', None, 'e6a8b63eea3a29f7', '4a7c9e230ec0e6cd',
     '0x1.be674f4a4ea76p-1', '0x1.4572c7a33db9bp-2', '0x1.e2940bbdffc1cp-1'),
    (46, 2, False, 'text', None, 'f59269bee918212a', '39e3607feed5f36e',
     '0x1.3d1df8d102a5ep-2', '0x1.b6f996eb2ffb4p-3', '0x1.f7e8224a15c46p-3'),
    (19, 1, False, 'text', None, '1d38bb7cb66d092a', '55969438e197afc6',
     '0x1.a02f6a0ca041cp-4', '0x1.ab113a0d9e190p-2', '0x1.62b4b847989fbp-3'),
    (10, 2, False, 'text', None, 'fd27a43ca87fa5cd', '7d7daa091c8fd827',
     '0x1.d7af6da3846a0p-4', '0x1.19e5799f72848p-2', '0x1.0e625f162660ap-3'),
    (26, 1, False, 'text', None, 'e3b0c44298fc1c14', '15345356059e245f',
     '0x1.a2f2c97c8b6a2p-4', '0x1.8091fa1eac026p-2', '0x1.782743a28c89ap-3'),
    (11, 1, True, 'text', None, '8534fb868f7dfb48', '5563d6995d06b7c4',
     '0x1.9907fb245a50dp-3', '0x1.f6ccccf1608a0p-3', '0x1.15d751355c020p-3'),
    (11, 1, False, 'json_object', 4000, '62adefd63ac0fc01', '9549e444f6913d99',
     '0x1.babfda07b2ccbp-3', '0x1.06e3cfc4447f9p-1', '0x1.ef4eca3c0a26dp-4'),
    (13, 1, False, 'json_schema', 3, '6f8a5c5cb00311b6', 'ba546b15dcc003f3',
     '0x1.df395aaa6311ep-3', '0x1.5913958726b4fp-3', '0x1.d3f2d5227fb44p-4'),
    (10, 1, False, 'text', True, '3d66c890c27ac630', '880f2135512ae46c',
     '0x1.9c9a03ab3f757p-4', '0x1.25b3bf967b2d2p-3', '0x1.e1a8b82a2d3acp-4'),
    (16, 1, True, 'text', None, '42c6fbaca47c80fd', 'eaae8a10e99363ac',
     '0x1.9ac97b696c343p-3', '0x1.0330a34ab52f3p-4', '0x1.0aaf89ab3badfp-3'),
    (11, 1, False, 'text', None, 'e3b0c44298fc1c14', '8eb568f7e7111ac2',
     '0x1.9d0064da58454p-4', '0x1.80e55cdd536a9p-2', '0x1.15d751355c020p-3'),
    (79, 12, False, 'text', None, '90cecfba7959045c', 'f79f16462fb9016d',
     '0x1.d30f4612f0dffp-3', '0x1.b2b592cd81960p-1', '0x1.02c7e4d650746p-1'),
    (31, 1, False, 'text', None, 'c8da22c0dab5cbe6', '103e6fbe87f797f3',
     '0x1.a4e8d13e4e539p-4', '0x1.af7aa43e2522bp-2', '0x1.07dce984e6bc9p-2'),
    (28, 1, False, 'text', 2500, '16bd9e3431d9580c', '0d6e2f0812ff3553',
     '0x1.2a100afadfd65p-3', '0x1.b1c512bfa6ccbp-3', '0x1.28e7381848faep-2'),
    (0, 0, False, 'text', None, 'e3b0c44298fc1c14', 'a5bc11c346d84841',
     '0x1.9893f80876febp-4', '0x1.81e50dade6034p-2', '0x1.eccd9b3df79c3p-5'),
    (37, 1, False, 'text', None, 'c0372c073414e203', '7a609f4b2bd70620',
     '0x1.a73fc0ba68882p-4', '0x1.12a6509cf650dp-1', '0x1.c9f301ebc128cp-3'),
    (0, 0, False, 'text', None, 'e3b0c44298fc1c14', 'a5bc11c346d84841',
     '0x1.9893f80876febp-4', '0x1.81e50dade6034p-2', '0x1.eccd9b3df79c3p-5'),
    (0, 0, False, 'text', None, 'e3b0c44298fc1c14', 'a5bc11c346d84841',
     '0x1.9893f80876febp-4', '0x1.81e50dade6034p-2', '0x1.eccd9b3df79c3p-5'),
    (46, 1, False, 'text', 1024, 'c562e07830cd9825', '3f7193bf17637c8c',
     '0x1.aabb1fe2d0923p-4', '0x1.a130f0ef298c4p-2', '0x1.3633c2318ad38p-2'),
]
# fmt: on

CLASSIFIERS = {name: load_classifier(name) for name in ("heuristic", "learned-v1", "learned-v2")}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@pytest.mark.parametrize(("body", "expected"), list(zip(BODIES, EXPECTED, strict=True)))
def test_features_and_scores_are_unchanged(body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    f = extract_features(body)
    cues = cue_vector(f)
    scores = [CLASSIFIERS[name].score(f).hex() for name in ("heuristic", "learned-v1", "learned-v2")]
    found = (
        f.total_chars,
        f.turns,
        f.has_tools,
        f.response_format,
        f.max_tokens,
        _digest(f.text),
        _digest(" ".join(float(v).hex() for v in cues)),
        *scores,
    )
    assert found == expected, f"features {f!r}, cues {cues!r}"
