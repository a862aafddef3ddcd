"""One registry for every plugin kind: models, benchmarks, attacks, defenses and judges.

Built-ins are listed below as lazy ``"module:Class"`` strings, so ``import mmsafe`` imports none of
them (and never torch). Third-party packages add plugins through entry points, one group per kind::

    [project.entry-points."mmsafe.attacks"]
    my_attack = "my_pkg.attacks:MyAttack"

Every plugin is a :class:`Component` subclass: a docstring (its first line is what ``mmsafe list``
shows), a pydantic ``Params`` model (``extra="forbid"``), a ``version`` and, for attacks and defenses,
the model capabilities it ``requires``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib import metadata
from types import MappingProxyType
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from mmsafe.errors import ConfigError
from mmsafe.plugin_meta import Paper, check_capabilities
from mmsafe.types import ComponentSpec

KINDS: tuple[str, ...] = ("model", "benchmark", "attack", "defense", "judge", "trainer")

BUILTINS: Mapping[str, Mapping[str, str]] = {
    "model": {
        "hf": "mmsafe.models.hf:HFModel",
        "hf-text": "mmsafe.models.hf_text:HFTextModel",
        "gemma-ocr": "mmsafe.models.gemma_ocr:GemmaOCR",
        "gemma-ocr-safe": "mmsafe.models.gemma_ocr_safe:GemmaOCRSafe",
        "gemma-llava": "mmsafe.models.gemma_llava:GemmaLlava",
        "llamacpp": "mmsafe.models.llamacpp:LlamaCppModel",
        "tiny-llava": "mmsafe.models.tiny_llava:TinyLlava",
        "tiny": "mmsafe.models.tiny:TinyModel",
        "openai": "mmsafe.models.openai:OpenAICompatModel",
        "scripted": "mmsafe.models.scripted:ScriptedModel",
    },
    "benchmark": {
        "starter": "mmsafe.datasets.starter:Starter",
        "figstep": "mmsafe.datasets.figstep:FigStepSafeBench",
        "mm-safetybench": "mmsafe.datasets.mm_safetybench:MMSafetyBench",
        "xstest": "mmsafe.datasets.xstest:XSTest",
        "harmbench": "mmsafe.datasets.harmbench:HarmBench",
        "jailbreakbench": "mmsafe.datasets.jailbreakbench:JailbreakBench",
        "jsonl": "mmsafe.datasets.jsonl:GenericFile",
        "vqa-starter": "mmsafe.datasets.vqa_starter:VQAStarter",
        "goat-bench": "mmsafe.datasets.goat_bench:GOATBench",
        "tovilag": "mmsafe.datasets.tovilag:ToViLaG",
        "vlsafe": "mmsafe.datasets.vlsafe:VLSafe",
        "rtvlm": "mmsafe.datasets.rtvlm:RTVLM",
        "auto-bench": "mmsafe.datasets.auto_bench:AutoBench",
        "mossbench": "mmsafe.datasets.mossbench:MOSSBench",
        "msts": "mmsafe.datasets.msts:MSTS",
        "holisafe": "mmsafe.datasets.holisafe:HoliSafe",
        "vlsu": "mmsafe.datasets.vlsu:VLSU",
        "mssbench": "mmsafe.datasets.mssbench:MSSBench",
        "siuo": "mmsafe.datasets.siuo:SIUO",
        "jailbreakv-28k": "mmsafe.datasets.jailbreakv_28k:JailBreakV28K",
        "vlguard": "mmsafe.datasets.vlguard:VLGuard",
        "vlsbench": "mmsafe.datasets.vlsbench:VLSBench",
        "privqa": "mmsafe.datasets.privqa:PrivQA",
    },
    "attack": {
        "none": "mmsafe.attacks.none:NoAttack",
        "text-only": "mmsafe.attacks.text.text_only:TextOnly",
        "figstep": "mmsafe.attacks.typographic.figstep:FigStep",
        "prefix-injection": "mmsafe.attacks.text.prefix_injection:PrefixInjection",
        "refusal-suppression": "mmsafe.attacks.text.refusal_suppression:RefusalSuppression",
        "hypothetical": "mmsafe.attacks.text.hypothetical:Hypothetical",
        "appeal-emotion": "mmsafe.attacks.text.appeal_emotion:AppealToEmotion",
        "aim": "mmsafe.attacks.text.aim:AIM",
        "ignore-previous": "mmsafe.attacks.text.ignore_previous:IgnorePrevious",
        "two-hop": "mmsafe.attacks.text.two_hop:TwoHop",
        "compose": "mmsafe.attacks.compose:Compose",
        "visual-injection": "mmsafe.attacks.typographic.visual_injection:VisualInjection",
        "pair": "mmsafe.attacks.text.pair:PAIR",
        "figstep-pro": "mmsafe.attacks.typographic.figstep_pro:FigStepPro",
        "mmsb-typo": "mmsafe.attacks.typographic.mmsb_typo:MMSafetyBenchTypo",
        "mmsb-sd-typo": "mmsafe.attacks.typographic.mmsb_sd_typo:MMSafetyBenchSDTypo",
        "render-text": "mmsafe.attacks.typographic.render_text:RenderText",
        "blank-image": "mmsafe.attacks.blank_image:BlankImage",
        "no-image": "mmsafe.attacks.no_image:NoImage",
        "adv-target": "mmsafe.attacks.adversarial.adv_target:TargetedString",
        "adv-universal": "mmsafe.attacks.adversarial.adv_universal:UniversalCorpus",
        "adv-caption": "mmsafe.attacks.adversarial.adv_caption:CaptionVQA",
        "adv-tool": "mmsafe.attacks.adversarial.adv_tool:ToolMisuse",
        "adv-embed": "mmsafe.attacks.adversarial.adv_embed:EmbeddingSpace",
        "adv-cropa": "mmsafe.attacks.adversarial.adv_cropa:CroPA",
        "si-attack": "mmsafe.attacks.query.si_attack:SIAttack",
        "jood": "mmsafe.attacks.query.jood:JOOD",
        "mml": "mmsafe.attacks.typographic.mml:MML",
        "comic-jailbreak": "mmsafe.attacks.typographic.comic_jailbreak:ComicJailbreak",
        "cs-dj": "mmsafe.attacks.typographic.cs_dj:CSDJ",
        "viscra": "mmsafe.attacks.typographic.viscra:VisCRA",
        "hades": "mmsafe.attacks.typographic.hades:HADES",
        "himrd": "mmsafe.attacks.typographic.himrd:HIMRD",
        "imgjp": "mmsafe.attacks.adversarial.imgjp:ImgJP",
        "umk": "mmsafe.attacks.adversarial.umk:UMK",
        "image-scaling": "mmsafe.attacks.typographic.image_scaling:ImageScaling",
        "alpha-blend": "mmsafe.attacks.typographic.alpha_blend:AlphaBlend",
        "bap": "mmsafe.attacks.adversarial.bap:BAP",
        "jps": "mmsafe.attacks.adversarial.jps:JPS",
    },
    "defense": {
        "none": "mmsafe.defenses.none:NoDefense",
        "system-prompt": "mmsafe.defenses.system_prompt:SafetySystemPrompt",
        "inferaligner": "mmsafe.defenses.inferaligner:InferAligner",
        "purify": "mmsafe.defenses.purify:ImagePurification",
        "ocr-filter": "mmsafe.defenses.ocr_filter:OCRFilter",
        "output-guard": "mmsafe.defenses.output_guard:OutputGuard",
        "guard-input": "mmsafe.defenses.guard_input:GuardInput",
        "mllm-protector": "mmsafe.defenses.mllm_protector:MLLMProtector",
        "self-moderation": "mmsafe.defenses.self_moderation:SelfModeration",
        "ecso": "mmsafe.defenses.ecso:ECSO",
        "adashield": "mmsafe.defenses.adashield:AdaShield",
        "jailguard": "mmsafe.defenses.jailguard:JailGuard",
        "stack": "mmsafe.defenses.stack:StackDefense",
        "guard-filter": "mmsafe.defenses.guard_filter:GuardFilter",
        "hidden-detect": "mmsafe.defenses.hidden_detect:HiddenDetect",
        "cider": "mmsafe.defenses.cider:CIDER",
        "eta": "mmsafe.defenses.eta:ETA",
        "uniguard": "mmsafe.defenses.uniguard:UniGuard",
        "bluesuffix": "mmsafe.defenses.bluesuffix:BlueSuffix",
    },
    "judge": {
        "refusal": "mmsafe.judges.refusal:RefusalJudge",
        "target-string": "mmsafe.judges.target_string:TargetStringJudge",
        "llm": "mmsafe.judges.llm:LLMJudge",
        "ensemble": "mmsafe.judges.ensemble:EnsembleJudge",
        "perspective": "mmsafe.judges.perspective:PerspectiveJudge",
        "detoxify": "mmsafe.judges.detoxify:DetoxifyJudge",
        "learned": "mmsafe.judges.learned:LearnedJudge",
        "harm": "mmsafe.judges.harm:HarmJudge",
        "reference": "mmsafe.judges.reference:ReferenceJudge",
        "guard": "mmsafe.judges.guard:GuardJudge",
        "utility": "mmsafe.judges.utility:UtilityJudge",
        "label-match": "mmsafe.judges.label_match:LabelMatchJudge",
        "choice": "mmsafe.judges.choice:ChoiceJudge",
        "llavaguard": "mmsafe.judges.llavaguard:LlavaGuardJudge",
        "shieldgemma2": "mmsafe.judges.shieldgemma2:ShieldGemma2Judge",
    },
    "trainer": {
        "sft": "mmsafe.training.sft:SafetySFT",
        "dpo": "mmsafe.training.dpo:DPO",
        "dress": "mmsafe.training.dress:DRESS",
        "protector-detoxifier": "mmsafe.training.protector_detoxifier:ProtectorDetoxifier",
        "protector-detector": "mmsafe.training.protector_detector:ProtectorDetector",
        "sft-vision": "mmsafe.training.sft_vision:VisionSafetySFT",
        "bluesuffix": "mmsafe.training.bluesuffix:BlueSuffixTrainer",
    },
}


class NoParams(BaseModel):
    """No parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    """Base of every plugin. Subclasses set ``kind``, ``name``, ``Params`` and a docstring."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    Params: ClassVar[type[BaseModel]] = NoParams
    requires: ClassVar[frozenset[str]] = frozenset()
    #: params that change how the component runs, not what it computes (kept out of the spec key)
    runtime_params: ClassVar[frozenset[str]] = frozenset()
    #: True for components that build sub-components: :meth:`Registry.create` then constructs them
    #: as ``cls(params, registry=self)``. Set for every class that declares sub-components
    #: (:mod:`mmsafe.components`); a plugin that creates them by hand sets it itself and creates
    #: them through ``self.registry`` (see :func:`registry_or_default`)
    uses_registry: ClassVar[bool] = False
    #: the smallest params with which the plugin runs offline (tests and ``mmsafe describe`` use them)
    example_params: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    #: the paper the plugin implements, with its threat model (None for plumbing)
    paper: ClassVar[Paper | None] = None

    _declared: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from mmsafe.components import declared

        cls._declared = declared(cls)
        if cls._declared:
            cls.uses_registry = True
        check_capabilities(cls)  # a typo in ``requires`` / ``capabilities`` fails here, at import
        if "Params" in vars(cls) and "example_params" not in vars(cls):
            cls.example_params = MappingProxyType({})  # examples belong to a Params model, not a parent's

    def __init__(
        self,
        params: BaseModel | Mapping[str, Any] | None = None,
        /,
        *,
        registry: Registry | None = None,
        **kwargs: Any,
    ) -> None:
        if params is None or isinstance(params, Mapping):
            params = self.Params.model_validate({**dict(params or {}), **kwargs})
        elif kwargs:
            raise TypeError("pass either a Params instance or keyword params, not both")
        self.params = params
        #: where declared sub-components are created (None: a default :class:`Registry`)
        self.registry: Registry | None = registry
        self._create_subcomponents()

    def _create_subcomponents(self) -> None:
        """Create the declared judges, defenses and attacks now (a bad config fails before any
        compute); declared models are created and loaded on first use."""
        for sub in self._declared.values():
            sub.prepare(self)

    def bind(self, store: Any) -> None:
        """Receive the run's store: every declared sub-model answers through its response cache
        from now on, and every declared sub-component is bound in turn. Overrides call super()."""
        for sub in self._declared.values():
            sub.bind(self, store)

    def close(self) -> None:
        """Release anything loaded: every declared sub-component, recursively. Overrides call super()."""
        for sub in self._declared.values():
            sub.close(self)

    @property
    def spec(self) -> ComponentSpec:
        """The resolved spec. With frozen params it is built once and reused (with its cached
        ``key``) while the params, name and version stay the same objects: the runner asks for it
        for every record it writes."""
        memo = self.__dict__.get("_spec_memo")
        if (
            memo is not None
            and memo[0] is self.params
            and memo[1] is self.kind
            and memo[2] is self.name
            and memo[3] is self.version
        ):
            return memo[4]
        spec = self._build_spec()
        if self.params.model_config.get("frozen"):
            self.__dict__["_spec_memo"] = (self.params, self.kind, self.name, self.version, spec)
        return spec

    def _build_spec(self) -> ComponentSpec:
        dumped = self.params.model_dump(mode="json")
        return ComponentSpec(
            kind=self.kind,
            name=self.name,
            params={k: v for k, v in dumped.items() if k not in self.runtime_params},
            runtime={k: v for k, v in dumped.items() if k in self.runtime_params},
            version=self.version,
        )

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else "(no description)"


def _format_validation(
    kind: str, name: str, where: str, exc: ValidationError, params_model: type[BaseModel]
) -> str:
    allowed = ", ".join(sorted(params_model.model_fields)) or "(none)"
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        field = f"{where}.params.{loc}" if loc else f"{where}.params"
        if err["type"] == "extra_forbidden":
            lines.append(f"{field}: unknown parameter for {kind} '{name}'; allowed: {allowed}")
        else:
            lines.append(f"{field}: {err['msg']}")
    return "\n".join(lines)


class Registry:
    """Maps (kind, name) to plugin classes; built-ins, entry points and explicit registrations."""

    def __init__(self, *, entry_points: bool = True) -> None:
        self._table: dict[str, dict[str, str | type[Component]]] = {k: dict(v) for k, v in BUILTINS.items()}
        if entry_points:
            for kind in KINDS:
                for ep in metadata.entry_points(group=f"mmsafe.{kind}s"):
                    self._table[kind].setdefault(ep.name, ep.value)

    def register(self, kind: str, name: str, cls: type[Component] | str) -> None:
        self._check_kind(kind)
        self._table[kind][name] = cls

    def names(self, kind: str) -> list[str]:
        self._check_kind(kind)
        return sorted(self._table[kind])

    def get(self, kind: str, name: str, *, where: str | None = None) -> type[Component]:
        self._check_kind(kind)
        try:
            target = self._table[kind][name]
        except KeyError:
            loc = f"{where}: " if where else ""
            raise ConfigError(
                f"{loc}unknown {kind} '{name}'; allowed: {', '.join(self.names(kind))}"
            ) from None
        if isinstance(target, str):
            mod_name, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(mod_name), attr)
            self._table[kind][name] = cls
            target = cls
        return target

    def create(
        self, kind: str, name: str, params: Mapping[str, Any] | None = None, *, where: str | None = None
    ) -> Component:
        cls = self.get(kind, name, where=where)
        try:
            p = cls.Params.model_validate(dict(params or {}))
        except ValidationError as exc:
            raise ConfigError(_format_validation(kind, name, where or kind, exc, cls.Params)) from None
        if getattr(cls, "uses_registry", False):  # it builds sub-components: they come from this registry too
            return cls(p, registry=self)
        return cls(p)

    def describe(self, kind: str) -> list[tuple[str, str]]:
        out = []
        for n in self.names(kind):
            try:
                out.append((n, self.get(kind, n).summary()))
            except Exception as exc:  # a broken third-party plugin must not hide the others
                out.append((n, f"(cannot load: {type(exc).__name__}: {exc})"))
        return out

    def _check_kind(self, kind: str) -> None:
        if kind not in self._table:
            raise ConfigError(f"unknown component kind '{kind}'; allowed: {', '.join(KINDS)}")


def registry_or_default(registry: Registry | None) -> Registry:
    """``registry``, or a fresh default :class:`Registry` (built-ins and entry points) when None.

    For the ``registry`` keyword of components with ``uses_registry``: constructed by
    :meth:`Registry.create` they get that registry; constructed directly they get the default one.
    """
    return Registry() if registry is None else registry
