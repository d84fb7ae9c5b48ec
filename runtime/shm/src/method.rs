//! Method ids (docs/shm-protocol.md §6): one stable number per RPC of
//! `dapr.proto.runtime.v1.Dapr`, plus Weft's own methods from 0x10000 on.
//! Ids are never reused; new RPCs get new numbers.

/// How a method answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One response record (with END).
    Unary,
    /// Any number of item records, then an END marker.
    ServerStream,
    /// Client and server streams: the first request record opens the call,
    /// further app messages carry the MORE flag, the runtime's are stream
    /// items ending with an END marker.
    Bidi,
}

/// One row of the method table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    pub id: u32,
    /// gRPC method name within `dapr.proto.runtime.v1.Dapr` (or Weft's).
    pub name: &'static str,
    pub kind: Kind,
}

macro_rules! methods {
    ($($konst:ident = $id:expr, $name:expr, $kind:ident;)*) => {
        $(#[doc = concat!("`", $name, "`")] pub const $konst: u32 = $id;)*
        /// Every method v1 defines.
        pub const ALL: &[Method] = &[$(Method { id: $id, name: $name, kind: Kind::$kind }),*];
    };
}

methods! {
    INVOKE_SERVICE = 1, "InvokeService", Unary;
    GET_STATE = 2, "GetState", Unary;
    GET_BULK_STATE = 3, "GetBulkState", Unary;
    SAVE_STATE = 4, "SaveState", Unary;
    QUERY_STATE_ALPHA1 = 5, "QueryStateAlpha1", Unary;
    DELETE_STATE = 6, "DeleteState", Unary;
    DELETE_BULK_STATE = 7, "DeleteBulkState", Unary;
    EXECUTE_STATE_TRANSACTION = 8, "ExecuteStateTransaction", Unary;
    PUBLISH_EVENT = 9, "PublishEvent", Unary;
    BULK_PUBLISH_EVENT_ALPHA1 = 10, "BulkPublishEventAlpha1", Unary;
    BULK_PUBLISH_EVENT = 11, "BulkPublishEvent", Unary;
    SUBSCRIBE_TOPIC_EVENTS_ALPHA1 = 12, "SubscribeTopicEventsAlpha1", Bidi;
    INVOKE_BINDING = 13, "InvokeBinding", Unary;
    GET_SECRET = 14, "GetSecret", Unary;
    GET_BULK_SECRET = 15, "GetBulkSecret", Unary;
    GET_CONFIGURATION_ALPHA1 = 16, "GetConfigurationAlpha1", Unary;
    GET_CONFIGURATION = 17, "GetConfiguration", Unary;
    SUBSCRIBE_CONFIGURATION_ALPHA1 = 18, "SubscribeConfigurationAlpha1", ServerStream;
    SUBSCRIBE_CONFIGURATION = 19, "SubscribeConfiguration", ServerStream;
    UNSUBSCRIBE_CONFIGURATION_ALPHA1 = 20, "UnsubscribeConfigurationAlpha1", Unary;
    UNSUBSCRIBE_CONFIGURATION = 21, "UnsubscribeConfiguration", Unary;
    TRY_LOCK_ALPHA1 = 22, "TryLockAlpha1", Unary;
    UNLOCK_ALPHA1 = 23, "UnlockAlpha1", Unary;
    GET_METADATA = 24, "GetMetadata", Unary;
    SET_METADATA = 25, "SetMetadata", Unary;
    SHUTDOWN = 26, "Shutdown", Unary;
    WEFT_ECHO = 0x1_0001, "weft.Echo", Unary;
    WEFT_SERVE_INVOCATIONS = 0x1_0002, "weft.ServeInvocations", Bidi;
    WEFT_GET_NEXT_ID = 0x1_0003, "weft.GetNextId", Unary;
}

/// Looks a method up by id.
pub fn by_id(id: u32) -> Option<&'static Method> {
    index_of(id).map(|i| &ALL[i])
}

/// A method's position in [`ALL`] (for tables indexed like it).
pub fn index_of(id: u32) -> Option<usize> {
    ALL.iter().position(|m| m.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.id, b.id, "{} and {}", a.name, b.name);
            }
        }
        assert_eq!(by_id(GET_STATE).unwrap().name, "GetState");
        assert!(by_id(0).is_none());
    }
}
