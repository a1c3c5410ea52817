"""Registry of interventions. Add a new one: subclass `Intervention`, then list it here."""
from __future__ import annotations

from plastic.interventions.base import Intervention
from plastic.interventions.cbp import CBP
from plastic.interventions.cchain import CChain
from plastic.interventions.gtr import GTR, KLPenalty
from plastic.interventions.hare_tortoise import HareTortoise
from plastic.interventions.injection import Injection
from plastic.interventions.l2 import L2Init, WeightDecay
from plastic.interventions.least import LEAST
from plastic.interventions.nap import NaP
from plastic.interventions.ne import NE
from plastic.interventions.parseval import Parseval
from plastic.interventions.redo import ReDo
from plastic.interventions.regrama import ReGraMa
from plastic.interventions.reset import Reset
from plastic.interventions.shrink_perturb import ShrinkPerturb
from plastic.interventions.swd import SWD
from plastic.interventions.trac import Trac

REGISTRY: dict[str, type[Intervention]] = {
    cls.name: cls for cls in (ReGraMa, SWD, ReDo, Reset, ShrinkPerturb, L2Init, WeightDecay, CBP, LEAST, GTR,
                              KLPenalty, NE, Injection, Parseval, CChain, NaP, Trac, HareTortoise)}
ALIASES = {"regrama": "grama", "inject": "injection", "ht": "hare_tortoise"}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def parse_names(spec: str) -> tuple[str, ...]:
    """'grama+swd' -> ('grama', 'swd'); 'none' or '' -> (). Raises ValueError on unknown names."""
    if spec in ("", "none"):
        return ()
    names = tuple(canonical(n.strip()) for n in spec.split("+"))
    for n in names:
        if n not in REGISTRY:
            raise ValueError(f"unknown intervention {n!r}; valid: none, {', '.join(sorted(REGISTRY))} "
                             f"(stack with '+', e.g. grama+swd)")
    if len(set(names)) != len(names):
        raise ValueError(f"intervention listed twice in {spec!r}")
    return names
