/// Values an entry point computes from its weights alone, moved out of it
/// into a companion entry point that the runtime calls once after the
/// weights are loaded or changed, instead of on every call
/// (`prepare-weights` makes them for entry points that update nothing:
/// inference). They are state arguments named `prepared.…`: derived, so
/// never saved with a checkpoint nor loaded from one.
public enum PreparedWeights {
    public static let statePrefix = "prepared."

    /// The entry point that computes `entry`'s prepared values.
    public static func preparerName(of entry: String) -> String { "prepare_" + entry }

    /// Whether a state buffer holds prepared values.
    public static func isPrepared(_ stateName: String) -> Bool { stateName.hasPrefix(statePrefix) }
}
