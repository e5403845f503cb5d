import KernelABI

/// The runtime kernels as generated code addresses them: by their index in
/// the table ddp_abi.h lists, which every compiled entry point is passed.
public enum KernelTable {
    /// The index of the kernel called `name` (a `KernelCall.kernel`).
    public static func index(of name: String) -> Int? {
        let index = Int(ddp_kernel_index(name))
        return index >= 0 ? index : nil
    }

    /// Every kernel's name, in table order.
    public static let names: [String] = (0..<Int(ddp_kernel_count.rawValue)).map { String(cString: ddp_kernel_name(Int32($0))) }

    /// Identifies the table code is generated against: its kernels' names,
    /// in order, and the revision of their argument layouts. An artifact
    /// records it; one generated for another table is refused.
    public static let abiHash = Hashing.fnv1a(names.joined(separator: ",") + ";arguments \(DDP_KERNEL_ARGUMENT_REVISION)")
}
