package dev.weft.sdk;

import com.google.protobuf.Empty;
import com.google.protobuf.Message;
import com.google.protobuf.Parser;
import dev.weft.proto.common.v1.Common;
import dev.weft.proto.runtime.v1.Configuration;
import dev.weft.proto.runtime.v1.DaprGrpc;
import dev.weft.proto.runtime.v1.DaprOuterClass;
import dev.weft.proto.runtime.v1.Invoke;
import dev.weft.proto.runtime.v1.Metadata;
import dev.weft.proto.runtime.v1.Pubsub;
import dev.weft.proto.runtime.v1.State;
import io.grpc.MethodDescriptor;
import weft.runtime.v1.AppChannelGrpc;
import weft.runtime.v1.Appchannel;

/** One RPC of the runtime: its shared-memory method id (§6) and its gRPC method. */
final class Rpc<Q extends Message, R extends Message> {
    final String name;
    final int shmMethod;
    final MethodDescriptor<Q, R> grpc;
    final Parser<R> parser;

    private Rpc(String name, int shmMethod, MethodDescriptor<Q, R> grpc, Parser<R> parser) {
        this.name = name;
        this.shmMethod = shmMethod;
        this.grpc = grpc;
        this.parser = parser;
    }

    static final Rpc<Invoke.InvokeServiceRequest, Common.InvokeResponse> INVOKE_SERVICE =
            new Rpc<>("InvokeService", 1, DaprGrpc.getInvokeServiceMethod(), Common.InvokeResponse.parser());
    static final Rpc<State.GetStateRequest, State.GetStateResponse> GET_STATE =
            new Rpc<>("GetState", 2, DaprGrpc.getGetStateMethod(), State.GetStateResponse.parser());
    static final Rpc<State.GetBulkStateRequest, State.GetBulkStateResponse> GET_BULK_STATE =
            new Rpc<>("GetBulkState", 3, DaprGrpc.getGetBulkStateMethod(), State.GetBulkStateResponse.parser());
    static final Rpc<State.SaveStateRequest, Empty> SAVE_STATE =
            new Rpc<>("SaveState", 4, DaprGrpc.getSaveStateMethod(), Empty.parser());
    static final Rpc<State.DeleteStateRequest, Empty> DELETE_STATE =
            new Rpc<>("DeleteState", 6, DaprGrpc.getDeleteStateMethod(), Empty.parser());
    static final Rpc<State.DeleteBulkStateRequest, Empty> DELETE_BULK_STATE =
            new Rpc<>("DeleteBulkState", 7, DaprGrpc.getDeleteBulkStateMethod(), Empty.parser());
    static final Rpc<State.ExecuteStateTransactionRequest, Empty> EXECUTE_STATE_TRANSACTION =
            new Rpc<>("ExecuteStateTransaction", 8, DaprGrpc.getExecuteStateTransactionMethod(), Empty.parser());
    static final Rpc<Pubsub.PublishEventRequest, Empty> PUBLISH_EVENT =
            new Rpc<>("PublishEvent", 9, DaprGrpc.getPublishEventMethod(), Empty.parser());
    static final Rpc<Pubsub.BulkPublishRequest, Pubsub.BulkPublishResponse> BULK_PUBLISH_EVENT =
            new Rpc<>("BulkPublishEvent", 11, DaprGrpc.getBulkPublishEventMethod(), Pubsub.BulkPublishResponse.parser());
    static final Rpc<Pubsub.SubscribeTopicEventsRequestAlpha1, Pubsub.SubscribeTopicEventsResponseAlpha1> SUBSCRIBE_TOPIC_EVENTS =
            new Rpc<>("SubscribeTopicEventsAlpha1", 12, DaprGrpc.getSubscribeTopicEventsAlpha1Method(),
                    Pubsub.SubscribeTopicEventsResponseAlpha1.parser());
    static final Rpc<Configuration.GetConfigurationRequest, Configuration.GetConfigurationResponse> GET_CONFIGURATION =
            new Rpc<>("GetConfiguration", 17, DaprGrpc.getGetConfigurationMethod(),
                    Configuration.GetConfigurationResponse.parser());
    static final Rpc<Configuration.SubscribeConfigurationRequest, Configuration.SubscribeConfigurationResponse> SUBSCRIBE_CONFIGURATION =
            new Rpc<>("SubscribeConfiguration", 19, DaprGrpc.getSubscribeConfigurationMethod(),
                    Configuration.SubscribeConfigurationResponse.parser());
    static final Rpc<Configuration.UnsubscribeConfigurationRequest, Configuration.UnsubscribeConfigurationResponse> UNSUBSCRIBE_CONFIGURATION =
            new Rpc<>("UnsubscribeConfiguration", 21, DaprGrpc.getUnsubscribeConfigurationMethod(),
                    Configuration.UnsubscribeConfigurationResponse.parser());
    static final Rpc<Metadata.GetMetadataRequest, Metadata.GetMetadataResponse> GET_METADATA =
            new Rpc<>("GetMetadata", 24, DaprGrpc.getGetMetadataMethod(), Metadata.GetMetadataResponse.parser());
    static final Rpc<Metadata.SetMetadataRequest, Empty> SET_METADATA =
            new Rpc<>("SetMetadata", 25, DaprGrpc.getSetMetadataMethod(), Empty.parser());
    static final Rpc<DaprOuterClass.ShutdownRequest, Empty> SHUTDOWN =
            new Rpc<>("Shutdown", 26, DaprGrpc.getShutdownMethod(), Empty.parser());
    static final Rpc<Appchannel.ServeInvocationsRequest, Appchannel.ServeInvocationsResponse> SERVE_INVOCATIONS =
            new Rpc<>("ServeInvocations", 0x10002, AppChannelGrpc.getServeInvocationsMethod(),
                    Appchannel.ServeInvocationsResponse.parser());

}
