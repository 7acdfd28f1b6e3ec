import CustosCore
import Testing

@Suite("ExactText")
struct ExactTextTests {
    let composed = "s\u{E9}"
    let decomposed = "se\u{301}"

    @Test("texts Swift calls equal but whose bytes differ are different keys")
    func bytesDecide() {
        #expect(composed == decomposed)  // what String does, and why this type exists
        #expect(ExactText(composed) != ExactText(decomposed))
        #expect(ExactText(composed) == ExactText("s\u{E9}"))
        var names: [ExactText: Int] = [:]
        names[exact: composed] = 1
        names[exact: decomposed] = 2
        #expect(names.count == 2)
        #expect(names[exact: composed] == 1)
        #expect(names[exact: decomposed] == 2)
        names[exact: composed] = nil
        #expect(names[exact: decomposed] == 2)
        #expect(Set([ExactText(composed), ExactText(decomposed), ExactText(composed)]).count == 2)
    }

    @Test("a bridged or sliced string hashes as its bytes")
    func nonContiguous() {
        let sliced = String("xx\(composed)".dropFirst(2))
        #expect(ExactText(sliced) == ExactText(composed))
        #expect(ExactText(sliced).hashValue == ExactText(composed).hashValue)
    }
}
