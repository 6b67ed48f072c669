"""The README's two commands, CI and the generated config reference stay in step with the code."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    assert lines[0] == "```bash"
    demo, tests = lines[1], lines[2]
    assert demo.endswith("sfg_run demo") and "pip install" in demo
    assert tests.endswith("python -m pytest -q") and '".[test]"' in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_config_reference_is_generated_from_the_schema():
    from sfg_keras.cli import config_markdown

    documented = (ROOT / "docs" / "config.md").read_text()
    assert config_markdown().strip() in documented, "docs/config.md is stale: regenerate it with `sfg_run config-help`"


def test_readme_documents_every_action_and_section():
    readme = (ROOT / "README.md").read_text()
    for action in ("train", "inference", "evaluation", "export", "analyse", "report", "generate-data", "demo"):
        assert f"`{action}`" in readme, action
    for section in ("[SYSTEM]", "[NETWORK]", "[TRAINING]", "[INFERENCE]", "[EVALUATION]", "[MULTITASK]", "[SFG]"):
        assert section in readme, section
    assert "DEMO_MINUTES" not in readme and "CONTENT_" not in readme
