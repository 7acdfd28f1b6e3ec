import CPgQuery

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs work on a fresh thread with a stack sized for it, and waits.
///
/// Why: libpg_query recurses once per nesting level (normalize, fingerprint and the JSON output
/// all do), about 350 bytes of stack per level, and a left-nested expression such as
/// `1+1+1+…` nests one level per operator — two bytes of SQL. On an 8 MiB thread, a statement of
/// roughly 40 KiB can therefore crash the process inside the C library (measured: SIGSEGV at
/// 30000 operators). Statements whose worst case fits the current thread's remaining stack run
/// inline; larger ones run here, with a stack proportional to their size.
enum LargeStack {
    /// Stack bytes reserved per byte of SQL (≈ 175 needed at worst, measured: a nesting level
    /// takes at least two bytes of SQL and about 350 bytes of stack), plus a base.
    static let bytesPerInputByte = 256
    static let baseStackSize = 16 << 20
    static let maximumStackSize = 1 << 30
    /// Statements this small run inline without asking: their worst case (about 175 KiB) fits
    /// any thread a server runs on.
    static let alwaysInlineBytes = 1 << 10
    /// Room kept free below libpg_query's worst case when running inline.
    static let inlineMargin = 512 << 10

    /// Whether a statement of `inputBytes` can safely be parsed on the current thread.
    static func fitsInline(inputBytes: Int) -> Bool {
        if inputBytes <= alwaysInlineBytes { return true }
        let remaining = Int(custos_stack_remaining())
        return inputBytes <= remaining / bytesPerInputByte && inputBytes * bytesPerInputByte + inlineMargin <= remaining
    }

    /// The stack size for a statement of `inputBytes`, or nil when even the maximum cannot hold its
    /// worst case (the caller then fails closed).
    static func stackSize(forInputBytes inputBytes: Int) -> Int? {
        let (product, overflow) = inputBytes.multipliedReportingOverflow(by: bytesPerInputByte)
        guard !overflow, product <= maximumStackSize - baseStackSize else { return nil }
        return baseStackSize + product
    }

    private final class Job: @unchecked Sendable {
        let work: () -> Void
        init(_ work: @escaping () -> Void) { self.work = work }
    }

    /// Runs `body` on a new thread with a `stackSize`-byte stack and returns its result; nil when
    /// the thread could not be created.
    static func run<T>(stackSize: Int, _ body: () -> T) -> T? {
        var result: T?
        let started: Bool = withoutActuallyEscaping(body) { body in
            let job = Job { result = body() }
            var attributes = pthread_attr_t()
            guard pthread_attr_init(&attributes) == 0 else { return false }
            defer { pthread_attr_destroy(&attributes) }
            guard pthread_attr_setstacksize(&attributes, stackSize) == 0 else { return false }
            let context = Unmanaged.passRetained(job).toOpaque()
            #if canImport(Darwin)
                var thread: pthread_t?
                let status = pthread_create(&thread, &attributes, { raw in
                    Unmanaged<Job>.fromOpaque(raw).takeRetainedValue().work()
                    return nil
                }, context)
                guard status == 0, let thread else {
                    Unmanaged<Job>.fromOpaque(context).release()
                    return false
                }
            #else
                var thread = pthread_t()
                let status = pthread_create(&thread, &attributes, { raw in
                    Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue().work()
                    return nil
                }, context)
                guard status == 0 else {
                    Unmanaged<Job>.fromOpaque(context).release()
                    return false
                }
            #endif
            pthread_join(thread, nil)
            return true
        }
        return started ? result : nil
    }
}
