"""The methods of `train.py --method NAME`: a tuner class (or a function that builds one), its
config dataclass and its default learning rate, under one name; and each option() field of a
config as one flag of train.py. The built-in methods are registered at the bottom; an exercise adds
its own with register().
"""
from dataclasses import dataclass, fields

from benchmarks.variants import LOPAVariantConfig, build_lopa
from lopa import IDPG, IDPGConfig, LoRA, LoRAConfig, PromptConfig, PromptTuning


@dataclass(frozen=True)
class Method:
    tuner: object  # builds the tuner: tuner(model, config)
    config: type   # its settings: a dataclass whose option() fields become train.py flags
    lr: float      # the default learning rate


METHODS = {}  # --method name -> Method; train.py, load_adapter and predict.py all read it


def register(tuner, config, lr, name=None):
    """Make a tuner class a method: `train.py --method NAME` then trains it (NAME: tuner.method)."""
    METHODS[name or tuner.method] = Method(tuner, config, lr)


def method_flags():
    """{flag: (config field, the methods that have it)}: every method's option() fields as flags."""
    flags = {}
    for name, method in METHODS.items():
        for f in fields(method.config):
            flag = f.metadata.get("flag", "")
            if flag is not None:
                flags.setdefault(flag or "--" + f.name.replace("_", "-"), (f, []))[1].append(name)
    return flags


def add_method_flags(parser, flags):
    """method_flags() as arguments of parser, default None: each config keeps its own default."""
    for flag, (f, users) in flags.items():
        parser.add_argument(flag, type=f.type, default=None, dest=dest(flag),
                            metavar=f.name.upper(),
                            help=f"{f.metadata['help']} ({', '.join(users)}; default {f.default})")


def method_config(args, flags):
    """args.method's config made from the flags given; its __post_init__ validates it."""
    given = {f.name: getattr(args, dest(flag)) for flag, (f, users) in flags.items()
             if args.method in users}
    return METHODS[args.method].config(**{k: v for k, v in given.items() if v is not None})


def dest(flag):  # --lora-r is args.option_lora_r: never the same name as one of train.py's own
    return "option_" + flag[2:].replace("-", "_")


register(PromptTuning, PromptConfig, lr=1e-2)
# lopa.LOPA itself, or with one of the study's flags (--combine, ...) its variant
register(build_lopa, LOPAVariantConfig, lr=1e-3, name="lopa")
register(LoRA, LoRAConfig, lr=1e-3)
register(IDPG, IDPGConfig, lr=1e-3)
