"""Exercise 1: LOPA's trainable parameters, counted by hand from the shapes of section 3.

    python exercises/solutions/count_params.py      # GPT-2 small and SmolLM2-135M, r = 1, 2, 4

The frozen encoder (by default the model itself, of width h_enc = d) is not counted: it never
trains.
"""


def by_hand(d, m=10, r=4, H=256, h_enc=None):
    """LOPA's trainable parameters on a model of width d, with an encoder of width h_enc."""
    h_enc = h_enc or d
    z_s = m * d                  # Z_S: (m, d)
    first = 2 * (h_enc * H + H)  # the first layers of MLP_u and MLP_v: h_enc -> H, weight, bias
    out_u = H * m * r + m * r    # MLP_u's output layer: H -> m r
    out_v = H * d * r + d * r    # MLP_v's output layer: H -> d r; only these two grow with r
    return z_s + first + out_u + out_v


def main(argv=None):
    for name, d in (("GPT-2 small", 768), ("SmolLM2-135M", 576)):
        print(f"{name} (d = {d}): " + ", ".join(f"r = {r}: {by_hand(d, r=r):,}" for r in (1, 2, 4)))
    return 0


if __name__ == "__main__":
    main()
