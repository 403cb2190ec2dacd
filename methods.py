"""Methods as plug-ins: a tuner class and its config dataclass, registered under the tuner's name,
become `train.py --method NAME`, and each option() field of the config becomes one of its flags.
lopa.py registers the built-in methods, so their users import METHODS from there.
"""
from dataclasses import dataclass, field, fields

from common import UserError


def option(default, help, flag=""):
    """A config field that train.py offers as the flag --NAME (or `flag`; None: no flag)."""
    return field(default=default, metadata={"help": help, "flag": flag})


def check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class Method:
    tuner: type    # a Tuner subclass, built as tuner(model, config)
    config: type   # its settings: a dataclass whose option() fields become train.py flags
    lr: float      # the default learning rate


METHODS = {}  # --method name -> Method; train.py, load_adapter and predict.py all read it


def register(tuner, config, lr):
    """Make a tuner class a method: `train.py --method NAME` then trains it (NAME: tuner.method)."""
    METHODS[tuner.method] = Method(tuner, config, lr)


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
