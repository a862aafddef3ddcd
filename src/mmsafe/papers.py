"""Papers that more than one plugin implements (an attack and the benchmark it published, a judge and a
defense built on one model): each cited once here; a plugin adds its own threat model with
:meth:`~mmsafe.plugin_meta.Paper.threat`."""

from __future__ import annotations

from mmsafe.plugin_meta import Paper

__all__ = ["BLUESUFFIX", "FIGSTEP", "HARMBENCH", "LLAMA_GUARD", "MM_SAFETYBENCH"]

FIGSTEP = Paper(
    title="FigStep: Jailbreaking Large Vision-Language Models via Typographic Visual Prompts",
    authors="Gong et al.",
    year=2025,
    url="https://arxiv.org/abs/2311.05608",
    threat_model="",
)
MM_SAFETYBENCH = Paper(
    title="MM-SafetyBench: A Benchmark for Safety Evaluation of Multimodal Large Language Models",
    authors="Liu et al.",
    year=2024,
    url="https://arxiv.org/abs/2311.17600",
    threat_model="",
)
HARMBENCH = Paper(
    title="HarmBench: A Standardized Evaluation Framework for Automated Red Teaming and Robust Refusal",
    authors="Mazeika et al.",
    year=2024,
    url="https://arxiv.org/abs/2402.04249",
    threat_model="",
)
LLAMA_GUARD = Paper(
    title="Llama Guard: LLM-based Input-Output Safeguard for Human-AI Conversations",
    authors="Inan et al.",
    year=2023,
    url="https://arxiv.org/abs/2312.06674",
    threat_model="",
)
BLUESUFFIX = Paper(
    title="BlueSuffix: Reinforced Blue Teaming for Vision-Language Models Against Jailbreak Attacks",
    authors="Zhao, Zheng, Luo, Li, Ma, Jiang",
    year=2025,
    url="https://arxiv.org/abs/2410.20971",
    threat_model="",
)
