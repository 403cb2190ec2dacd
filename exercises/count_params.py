"""Exercise 1: LOPA's trainable parameters, counted by hand from the shapes of section 3.

    python exercises/count_params.py       # your counts: GPT-2 small and SmolLM2-135M, r = 1, 2, 4
    python -m pytest tests/test_exercises.py --student -k count_params   # checks them

The frozen encoder (by default the model itself, of width h_enc = d) is not counted: it never
trains.
"""


def by_hand(d, m=10, r=4, H=256, h_enc=None):
    """Exercise 1. LOPA's trainable parameters on a model of width d, with an encoder of width h_enc
    (None: the model itself, h_enc = d): the numbers in Z_S and in the two MLPs, each
    Dropout -> Linear(h_enc, H) -> tanh -> Linear(H, out), biases included."""
    raise NotImplementedError("exercise 1: by_hand() is yours to write")


def main(argv=None):
    for name, d in (("GPT-2 small", 768), ("SmolLM2-135M", 576)):
        print(f"{name} (d = {d}): " + ", ".join(f"r = {r}: {by_hand(d, r=r):,}" for r in (1, 2, 4)))
    return 0


if __name__ == "__main__":
    main()
