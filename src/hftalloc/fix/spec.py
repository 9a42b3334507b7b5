"""FIX 4.4 constants: message types, tags, and the required fields this package checks."""

from __future__ import annotations

__all__ = [
    "ADMIN_TYPES",
    "APP_TYPES",
    "BEGIN_STRING",
    "HEADER_TAGS",
    "REQUIRED",
    "MsgType",
    "Tag",
]

BEGIN_STRING = "FIX.4.4"


class MsgType:
    """MsgType (35) values."""

    HEARTBEAT = "0"
    TEST_REQUEST = "1"
    RESEND_REQUEST = "2"
    REJECT = "3"
    SEQUENCE_RESET = "4"
    LOGOUT = "5"
    LOGON = "A"
    NEW_ORDER_SINGLE = "D"
    ORDER_CANCEL_REQUEST = "F"
    ORDER_CANCEL_REPLACE_REQUEST = "G"
    EXECUTION_REPORT = "8"
    ORDER_CANCEL_REJECT = "9"
    MARKET_DATA_REQUEST = "V"
    MARKET_DATA_SNAPSHOT = "W"
    MARKET_DATA_INCREMENTAL = "X"
    BUSINESS_REJECT = "j"


class Tag:
    """Tag numbers used by the session and application layers."""

    AVG_PX = 6
    BEGIN_SEQ_NO = 7
    BEGIN_STRING = 8
    BODY_LENGTH = 9
    CHECKSUM = 10
    CL_ORD_ID = 11
    CUM_QTY = 14
    END_SEQ_NO = 16
    EXEC_ID = 17
    MSG_SEQ_NUM = 34
    MSG_TYPE = 35
    NEW_SEQ_NO = 36
    ORDER_ID = 37
    ORDER_QTY = 38
    ORD_STATUS = 39
    ORD_TYPE = 40
    ORIG_CL_ORD_ID = 41
    POSS_DUP_FLAG = 43
    PRICE = 44
    REF_SEQ_NUM = 45
    SENDER_COMP_ID = 49
    SENDING_TIME = 52
    SIDE = 54
    SYMBOL = 55
    TARGET_COMP_ID = 56
    TEXT = 58
    TIME_IN_FORCE = 59
    TRANSACT_TIME = 60
    ENCRYPT_METHOD = 98
    HEART_BT_INT = 108
    TEST_REQ_ID = 112
    ORIG_SENDING_TIME = 122
    GAP_FILL_FLAG = 123
    RESET_SEQ_NUM_FLAG = 141
    EXEC_TYPE = 150
    LEAVES_QTY = 151
    LAST_QTY = 32
    LAST_PX = 31
    MD_REQ_ID = 262
    SUBSCRIPTION_REQUEST_TYPE = 263
    MARKET_DEPTH = 264
    MD_UPDATE_TYPE = 265
    NO_MD_ENTRY_TYPES = 267
    NO_MD_ENTRIES = 268
    MD_ENTRY_TYPE = 269
    MD_ENTRY_PX = 270
    MD_ENTRY_SIZE = 271
    MD_UPDATE_ACTION = 279
    NO_RELATED_SYM = 146
    REF_TAG_ID = 371
    REF_MSG_TYPE = 372
    SESSION_REJECT_REASON = 373
    BUSINESS_REJECT_REASON = 380
    CXL_REJ_RESPONSE_TO = 434
    CXL_REJ_REASON = 102


ADMIN_TYPES = frozenset("0123456A")  # session-level messages (gap-filled on resend)
APP_TYPES = frozenset("DFG89VWX")    # application messages handled by this package

# header tags that a resend rebuilds (everything else of a stored message is body)
HEADER_TAGS = frozenset((8, 9, 35, 49, 56, 34, 43, 52, 97, 122, 115, 128, 50, 57, 142, 143,
                         144, 145, 129, 116, 90, 91, 347, 369, 627, 10))

# required body tags per MsgType (FIX 4.4, the Instrument's Symbol included)
REQUIRED: dict[str, tuple[int, ...]] = {
    "A": (98, 108),
    "1": (112,),
    "2": (7, 16),
    "3": (45,),
    "4": (36,),
    "D": (11, 55, 54, 60, 40),
    "F": (41, 11, 55, 54, 60),
    "G": (41, 11, 55, 54, 60, 40),
    "8": (37, 17, 150, 39, 55, 54, 151, 14, 6),
    "9": (37, 11, 41, 39, 434),
    "V": (262, 263, 264, 267, 146),
    "W": (55, 268),
    "X": (268,),
}
