"""Concrete environments. Importing this package registers them (lazily) under ``agentrl/``."""

from pathlib import Path

from agentrl.env.registry import register

# math: single-turn, graded by envs._math_grading (see envs/math.py)
register("Math-v0", "envs.math:MathEnv", max_turns=1)
register("GSM8K-v0", "envs.math:MathEnv", max_turns=1, prompt_template="gsm8k", samples="gsm8k-sample")
# reasoning-gym tasks, scored by their own scorers (see envs/reasoning_gym_env.py)
register("ReasoningGym-v0", "envs.reasoning_gym_env:ReasoningGymEnv", max_turns=1, task="leg_counting")
# gymnasium toy-text games played through text (see envs/gym_text.py)
register("FrozenLake-v0", "envs.gym_text:GymTextEnv", max_turns=20, game_id="FrozenLake")
register("Taxi-v0", "envs.gym_text:GymTextEnv", max_turns=60, game_id="Taxi")
register("Blackjack-v0", "envs.gym_text:GymTextEnv", max_turns=10, game_id="Blackjack")
register("CliffWalking-v0", "envs.gym_text:GymTextEnv", max_turns=50, game_id="CliffWalking")
# Search-R1 search-and-answer; offline BM25 over envs/data/search_mini.jsonl unless
# $AGENTRL_RETRIEVER_URL or retriever_url= names a retrieval server (see envs/search.py)
register("Search-v0", "envs.search:SearchEnv", max_turns=4, retriever="auto")
# function calling (hermes <tool_call>) with the calculator and python tools on word problems (see envs/tool_use.py)
register("ToolUse-v0", "envs.tool_use:ToolUseEnv", max_turns=4)
# the README's example: guess a digit with higher/lower hints (see envs/guess.py, recipes/guess/)
register("Guess-v0", "envs.guess:GuessEnv", max_turns=3)
# environments of other ecosystems (agentrl/env/adapters/, docs/environments.md): skyrl-gym's GSM8K
register("SkyRL-v0", "agentrl.env.adapters.skyrl_gym:SkyRLGymEnv", max_turns=1, env="gsm8k")
# an agent program, async (openai.AsyncOpenAI client, task) -> reward, run through an OpenAI-compatible endpoint
# (see agentrl/env/agent.py, docs/agents.md): env-kwargs {"agent": "module:function" or "file.py:function"};
# by default the ReAct agent of recipes/openai_agent/ (registered when the repository's recipes/ folder is here)
_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "openai_agent"
if (_RECIPE / "agent.py").exists():
    register("Agent-v0", "agentrl.env.agent:AgentEnv", max_turns=3, agent=f"{_RECIPE / 'agent.py'}:solve",
             tasks=str(_RECIPE / "test.jsonl"))
# benchmarks with their packages' own data and grading (see envs/benchmarks/; extras bfcl, code, games)
register("BFCL-v0", "envs.benchmarks.bfcl:BFCLEnv", max_turns=1, category="simple_python")
register("BFCL-MultiTurn-v0", "envs.benchmarks.bfcl:BFCLMultiTurnEnv", max_turns=40, category="multi_turn_base")
register("HumanEval-v0", "envs.benchmarks.humaneval:HumanEvalEnv", max_turns=3, max_attempts=3)
register("TextArena-v0", "envs.benchmarks.textarena_env:TextArenaEnv", max_turns=30, game="Sokoban-v0")
register("Tau2-v0", "envs.benchmarks.tau2_env:Tau2Env", max_turns=30, domain="airline")
