package dev.weft.sdk.shm;

import static java.nio.charset.StandardCharsets.UTF_8;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import dev.weft.proto.runtime.v1.State.GetStateResponse;
import dev.weft.sdk.HttpExtension;
import dev.weft.sdk.InvokeMethodRequest;
import dev.weft.sdk.NotFoundException;
import dev.weft.sdk.StatusCode;
import dev.weft.sdk.TransportKind;
import dev.weft.sdk.UnavailableException;
import dev.weft.sdk.WeftClient;
import dev.weft.sdk.WeftException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import weft.runtime.v1.Appchannel;
import weft.runtime.v1.Shm.CallContext;

/**
 * The client's side of the CONTEXT feature (§5.1) and of a goodbye (§2.4),
 * against a scripted peer: the real runtime does not advertise CONTEXT yet,
 * so these check the encoding the spec asks for; the end-to-end tests
 * exercise it once the runtime sets the feature bit.
 */
class CallContextSessionTest {
    static byte[] withContext(CallContext ctx, byte[] body) {
        byte[] block = CallContextCodec.encode(ctx);
        return ByteBuffer.allocate(block.length + body.length).put(block).put(body).array();
    }

    static ScriptedPeer.Answer answer(ScriptedPeer.Request r) {
        boolean ctx = (r.envelope().flags() & Protocol.FLAG_CONTEXT) != 0;
        switch (r.envelope().method()) {
            case 2: { // GetState: the data says what the request carried
                long t = ctx ? CallContextCodec.split(r.body()).context().getTimeoutMicros() : -1;
                byte[] body = GetStateResponse.newBuilder().setData(ByteString.copyFromUtf8("timeout=" + t))
                        .setEtag("1").build().toByteArray();
                if (!ctx) {
                    return new ScriptedPeer.Answer(Protocol.FLAG_END, 0, body);
                }
                CallContext resp = CallContext.newBuilder()
                        .addMetadata(Appchannel.Metadata.newBuilder().setKey("x-seen").addValues("yes")).build();
                return new ScriptedPeer.Answer(Protocol.FLAG_END | Protocol.FLAG_CONTEXT, 0, withContext(resp, body));
            }
            case 1: { // InvokeService: an error with details and response metadata
                byte[] details = com.google.rpc.Status.newBuilder().setCode(5).setMessage("no order 7").build().toByteArray();
                CallContext resp = CallContext.newBuilder().setStatusDetails(ByteString.copyFrom(details))
                        .addMetadata(Appchannel.Metadata.newBuilder().setKey("weft-error-origin").addValues("app")).build();
                return new ScriptedPeer.Answer(Protocol.FLAG_END | Protocol.FLAG_CONTEXT, 5,
                        withContext(resp, "no order 7".getBytes(UTF_8)));
            }
            case 24: // GetMetadata: the peer says goodbye instead
                return new ScriptedPeer.Answer(0, -3, "protocol error: scripted goodbye".getBytes(UTF_8));
            default:
                return new ScriptedPeer.Answer(Protocol.FLAG_END, 12, "unimplemented".getBytes(UTF_8));
        }
    }

    static WeftClient client(ScriptedPeer p) {
        return WeftClient.builder().transport(TransportKind.SHM).appId("app").shmSocket(p.socket).build();
    }

    @Test
    void withTheFeatureDeadlineAndMetadataTravelInTheContext() throws Exception {
        Path dir = Files.createTempDirectory("weft-peer-");
        try (ScriptedPeer p = new ScriptedPeer(dir, Protocol.FEATURE_CONTEXT, CallContextSessionTest::answer);
                WeftClient c = client(p)) {
            assertTrue(c.hasCallContext());
            // No deadline, no metadata: no context block.
            assertEquals("timeout=-1", c.getState("s", "k").getValueAsString());
            assertEquals(0, p.requests.take().envelope().flags());
            // A deadline: timeout_micros is what is left of it.
            String got = c.withTimeout(Duration.ofSeconds(2)).getState("s", "k").getValueAsString();
            ScriptedPeer.Request r = p.requests.take();
            assertEquals(Protocol.FLAG_CONTEXT, r.envelope().flags());
            long t = Long.parseLong(got.substring("timeout=".length()));
            assertTrue(t > 1_000_000 && t <= 2_000_000, "timeout_micros " + t);
            // Metadata, and an error whose END carries details and response metadata.
            NotFoundException e = assertThrows(NotFoundException.class, () -> c.invokeMethod(
                    new InvokeMethodRequest("other", "m").setBody("x").putMetadata("X-Tenant", "acme")
                            .setHttpExtension(HttpExtension.POST)));
            r = p.requests.take();
            CallContext sent = CallContextCodec.split(r.body()).context();
            assertEquals("x-tenant", sent.getMetadata(0).getKey(), "keys are lower-case");
            assertEquals("acme", sent.getMetadata(0).getValues(0));
            assertEquals(0, sent.getTimeoutMicros(), "no deadline of its own");
            assertNotNull(e.getStatus());
            assertEquals(5, e.getStatus().getCode());
            assertEquals("no order 7", e.getStatusMessage());
            assertEquals("app", e.getResponseMetadata().get("weft-error-origin"));
        }
    }

    @Test
    void withoutTheFeatureNothingCarriesAContext() throws Exception {
        Path dir = Files.createTempDirectory("weft-peer-");
        try (ScriptedPeer p = new ScriptedPeer(dir, 0, CallContextSessionTest::answer); WeftClient c = client(p)) {
            assertFalse(c.hasCallContext());
            assertEquals("timeout=-1", c.withTimeout(Duration.ofSeconds(2)).getState("s", "k").getValueAsString());
            assertEquals(0, p.requests.take().envelope().flags(), "the deadline stays client-side");
            WeftException e = assertThrows(WeftException.class, () -> c.invokeMethod(
                    new InvokeMethodRequest("other", "m").putMetadata("x-tenant", "acme")));
            assertEquals(StatusCode.FAILED_PRECONDITION, e.getCode());
            assertTrue(p.requests.isEmpty(), "nothing was sent");
        }
    }

    @Test
    void aDeadlineWithoutAnAnswerSendsCancel() throws Exception {
        Path dir = Files.createTempDirectory("weft-peer-");
        try (ScriptedPeer p = new ScriptedPeer(dir, 0, r -> null); WeftClient c = client(p)) {
            long t0 = System.nanoTime();
            assertThrows(dev.weft.sdk.DeadlineExceededException.class,
                    () -> c.withTimeout(Duration.ofMillis(200)).getState("s", "k"));
            assertTrue(TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - t0) < 2000);
            ScriptedPeer.Request req = p.requests.poll(5, TimeUnit.SECONDS);
            ScriptedPeer.Request cancel = p.requests.poll(5, TimeUnit.SECONDS);
            assertNotNull(cancel, "a CANCEL record follows");
            assertEquals(Protocol.FLAG_CANCEL, cancel.envelope().flags());
            assertEquals(0, cancel.envelope().method());
            assertEquals(req.envelope().correlation(), cancel.envelope().correlation());
        }
    }

    @Test
    void aGoodbyeFailsTheCallWithItsMessageAndTheNextCallReconnects() throws Exception {
        Path dir = Files.createTempDirectory("weft-peer-");
        try (ScriptedPeer p = new ScriptedPeer(dir, 0, CallContextSessionTest::answer); WeftClient c = client(p)) {
            UnavailableException e = assertThrows(UnavailableException.class, c::getMetadata);
            assertTrue(e.getMessage().contains("scripted goodbye"), e.getMessage());
            assertTrue(e.getMessage().contains("INVALID_ARGUMENT"), e.getMessage());
            assertEquals("timeout=-1", c.getState("s", "k").getValueAsString(), "a new session");
        }
    }
}
