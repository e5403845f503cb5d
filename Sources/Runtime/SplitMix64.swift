/// A small, fast, seeded pseudo-random number generator (Steele, Lea and
/// Flood's SplitMix64, as used to seed the xoshiro family).
///
/// The same seed always produces the same sequence on every platform, which
/// makes data augmentation and weight initialisation reproducible. The whole
/// state is the public `state` word, so a training checkpoint can save it and
/// resume the exact same stream.
///
/// Not suitable for cryptography.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    /// The generator's entire state; the next output depends only on it.
    public var state: UInt64

    /// Creates a generator whose first output is the SplitMix64 output for `seed`.
    public init(seed: UInt64) {
        state = seed
    }

    /// Returns the next 64 pseudo-random bits (the standard splitmix64 step).
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
