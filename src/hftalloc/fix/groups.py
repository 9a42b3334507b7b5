"""Repeating groups of FIX 4.4 for the messages of this package.

``GROUPS`` maps a NumInGroup tag to ``(delimiter, member tags)``: the delimiter is the
first field of every entry, the members are every tag an entry may hold. A member that is
itself a key of ``GROUPS`` (e.g. NoPartySubIDs 802 inside NoPartyIDs 453) is a nested
group. The table is the union, over the header, the trailer and the messages A, D, F, G,
8, 9, V, W and X, of the groups of the FIX 4.4 data dictionary (components expanded).
``ALT_DELIMITERS`` lists the other first fields a group's entries may start with in some
message: in MarketDataIncrementalRefresh an entry of NoMDEntries starts with
MDUpdateAction (279).
"""

from __future__ import annotations

__all__ = ["ALT_DELIMITERS", "GROUPS", "MAX_GROUP_DEPTH"]

MAX_GROUP_DEPTH = 4   # groups nested deeper than this are refused (FixGroupError)

GROUPS: dict[int, tuple[int, frozenset[int]]] = {
    78: (79, frozenset((79, 80, 467, 539, 661, 736))),  # NoAllocs (nests NoNestedPartyIDs)
    136: (137, frozenset((137, 138, 139, 891))),  # NoMiscFees
    146: (55, frozenset((  # NoRelatedSym (nests 454, 555, 711, 864)
        15, 22, 48, 55, 65, 106, 107, 167, 200, 201, 202, 206, 207, 223, 224, 225, 226, 227,
        228, 231, 239, 240, 255, 348, 349, 350, 351, 454, 460, 461, 470, 471, 472, 541, 543,
        555, 667, 691, 711, 762, 864, 873, 874, 875, 876, 947
    ))),
    232: (233, frozenset((233, 234))),  # NoStipulations
    267: (269, frozenset({269})),  # NoMDEntryTypes
    268: (269, frozenset((  # NoMDEntries (nests 454, 555, 711, 864)
        15, 18, 22, 37, 48, 55, 58, 59, 65, 83, 106, 107, 110, 126, 167, 200, 201, 202, 206,
        207, 223, 224, 225, 226, 227, 228, 231, 239, 240, 255, 269, 270, 271, 272, 273, 274,
        275, 276, 277, 278, 279, 280, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292,
        299, 336, 346, 348, 349, 350, 351, 354, 355, 432, 451, 454, 460, 461, 470, 471, 472,
        541, 543, 546, 555, 625, 667, 691, 711, 762, 811, 864, 873, 874, 875, 876, 947, 1023
    ))),
    382: (375, frozenset((337, 375, 437, 438, 655))),  # NoContraBrokers
    384: (372, frozenset((372, 385))),  # NoMsgTypes
    386: (336, frozenset((336, 625))),  # NoTradingSessions
    453: (448, frozenset((447, 448, 452, 802))),  # NoPartyIDs (nests NoPartySubIDs)
    454: (455, frozenset((455, 456))),  # NoSecurityAltID
    457: (458, frozenset((458, 459))),  # NoUnderlyingSecurityAltID
    518: (519, frozenset((519, 520, 521))),  # NoContAmts
    539: (524, frozenset((524, 525, 538, 804))),  # NoNestedPartyIDs (nests NoNestedPartySubIDs)
    555: (600, frozenset((  # NoLegs (nests NoNestedPartyIDs, NoLegSecurityAltID, NoLegStipulations)
        248, 249, 250, 251, 252, 253, 254, 257, 539, 556, 564, 565, 566, 587, 588, 596, 597,
        598, 599, 600, 601, 602, 603, 604, 607, 608, 609, 610, 611, 612, 613, 614, 615, 616,
        617, 618, 619, 620, 621, 622, 623, 624, 637, 654, 683, 687, 690, 739, 740, 764, 942,
        955, 956
    ))),
    604: (605, frozenset((605, 606))),  # NoLegSecurityAltID
    627: (628, frozenset((628, 629, 630))),  # NoHops
    683: (688, frozenset((688, 689))),  # NoLegStipulations
    711: (311, frozenset((  # NoUnderlyings (nests NoUnderlyingSecurityAltID, NoUnderlyingStips)
        241, 242, 243, 244, 245, 246, 247, 256, 305, 306, 307, 308, 309, 310, 311, 312, 313,
        315, 316, 317, 318, 362, 363, 364, 365, 435, 436, 457, 462, 463, 542, 592, 593, 594,
        595, 763, 810, 877, 878, 879, 882, 883, 884, 885, 886, 887, 941
    ))),
    802: (523, frozenset((523, 803))),  # NoPartySubIDs
    804: (545, frozenset((545, 805))),  # NoNestedPartySubIDs
    864: (865, frozenset((865, 866, 867, 868))),  # NoEvents
    887: (888, frozenset((888, 889))),  # NoUnderlyingStips
}

ALT_DELIMITERS: dict[int, frozenset[int]] = {268: frozenset((279,))}
