#!/usr/bin/env node
// An independent OCPP-J peer built on the npm package `ocpp-rpc`, driven by the Python
// interoperability tests (tests/interop/). It is either side:
//
//   node ocpp_rpc_peer.js charge-point < plan.json   connect, run the plan's steps, exit
//   node ocpp_rpc_peer.js csms < options.json        serve as a CSMS until stdin closes
//
// It reports JSON lines on stdout, one per fact (every frame in and out, every call's
// outcome, every strict-mode validation failure), so the test asserts on what the
// independent implementation saw, not on what evguard believes it sent.
'use strict';

const fs = require('fs');
const { RPCClient, RPCServer, createRPCError } = require('ocpp-rpc');
const { readStdin, report, resolveRefs } = require('./plan_refs');

function errorFact(error) {
    return { code: error.rpcErrorCode ?? null, message: String(error.message ?? error),
             details: error.details ?? null };
}

// Every frame each side sent or received, verbatim, and strict-mode failures.
function watch(client, identity) {
    client.on('message', ({ message, outbound }) => report({
        event: 'frame', identity, direction: outbound ? 'out' : 'in',
        text: Buffer.isBuffer(message) ? message.toString('utf8') : String(message) }));
    client.on('strictValidationFailure', (failure) => report({
        event: 'strictValidationFailure', identity, method: failure.method,
        messageId: failure.messageId, outbound: failure.outbound, isCall: failure.isCall,
        error: String(failure.error?.message ?? failure.error) }));
    client.on('badMessage', ({ buffer, error }) => report({
        event: 'badMessage', identity, text: buffer.toString('utf8'),
        error: String(error?.message ?? error) }));
}

// ---- charge point ---------------------------------------------------------------------
// A plan: {url, identity, password?, version: "1.6"|"2.0.1", protocols?, caFile?, strict,
// steps}
// (protocols: the subprotocols offered, in preference order; default the version's); a step
// is {call, params, strict?} (strict false: this call only is not validated on our side)
// or {raw: text, replyId: id|null, waitMs?} (sent verbatim; the frame answering replyId
// is reported, or whatever arrives within waitMs when the id is unreadable), or
// {awaitHandled: n, waitMs?} (wait until n calls from the CSMS were answered, by the plan's
// `handlers`: {method: result}). Params may refer to earlier results (plan_refs.js).
async function rawStep(client, step) {
    const waitMs = step.waitMs ?? 5000;
    return await new Promise((resolve) => {
        const seen = [];
        const onMessage = ({ message, outbound }) => {
            if (outbound) return;
            const text = String(message);
            seen.push(text);
            let frame = null;
            try { frame = JSON.parse(text); } catch { /* reported as text */ }
            if (step.replyId != null && Array.isArray(frame) && frame[1] === step.replyId) {
                finish(frame);
            }
        };
        const finish = (reply) => {
            clearTimeout(timer);
            client.off('message', onMessage);
            resolve({ reply, received: seen });
        };
        const timer = setTimeout(() => finish(null), waitMs);
        client.on('message', onMessage);
        client.sendRaw(step.raw);
    });
}

async function chargePoint(plan) {
    const client = new RPCClient({
        endpoint: plan.url, identity: plan.identity, password: plan.password ?? undefined,
        protocols: plan.protocols ?? [`ocpp${plan.version}`],
        strictMode: plan.strict !== false, reconnect: false,
        callTimeoutMs: plan.callTimeoutMs ?? 15000,
        // wss:// (security profile 2): trust the test's self-signed certificate
        wsOpts: plan.caFile ? { ca: fs.readFileSync(plan.caFile) } : undefined,
    });
    watch(client, plan.identity);
    // answers to calls the CSMS makes: {method: result}; anything else gets NotImplemented
    let handled = 0;
    for (const [method, result] of Object.entries(plan.handlers ?? {})) {
        client.handle(method, () => { handled += 1; return result; });
    }
    try {
        await client.connect();
    } catch (error) {
        report({ event: 'connect_failed', status: error.code ?? null, error: String(error.message) });
        return 3;
    }
    report({ event: 'connected', protocol: client.protocol });
    client.on('close', ({ code, reason }) => report({
        event: 'closed', code, reason: String(reason) }));
    const results = [];
    for (const [index, step] of plan.steps.entries()) {
        if (step.raw !== undefined) {
            const { reply, received } = await rawStep(client, step);
            report({ step: index, raw: step.raw, reply, received });
            continue;
        }
        if (step.awaitHandled !== undefined) {
            const deadline = Date.now() + (step.waitMs ?? 5000);
            while (handled < step.awaitHandled && Date.now() < deadline) {
                await new Promise((resolve) => setTimeout(resolve, 20));
            }
            report({ step: index, awaitHandled: step.awaitHandled, handled });
            continue;
        }
        const strict = plan.strict !== false && step.strict !== false;
        if (!strict) client.reconfigure({ strictMode: false });
        try {
            const result = await client.call(step.call, resolveRefs(step.params ?? {}, results));
            results[index] = result;
            report({ step: index, call: step.call, ok: true, result });
        } catch (error) {
            report({ step: index, call: step.call, ok: false, error: errorFact(error) });
        } finally {
            if (!strict) client.reconfigure({ strictMode: plan.strict !== false });
        }
    }
    if (client.state !== RPCClient.CLOSED) {
        await client.close({ code: 1000, reason: 'plan done' });
    }
    return 0;
}

// ---- CSMS -------------------------------------------------------------------------------
// Options: {port, password?, protocols?, callsAfterBoot?} (protocols: the subprotocols it
// accepts, in its order of preference; default both). Answers every action chargers send,
// schema-valid, with fixed values the tests recognise (transaction id 4242, heartbeat
// interval 300 s).
const NOW = '2026-01-02T03:04:05.000Z';
const ANSWERS = {
    'ocpp1.6': {
        BootNotification: () => ({ status: 'Accepted', currentTime: NOW, interval: 300 }),
        Heartbeat: () => ({ currentTime: NOW }),
        Authorize: () => ({ idTagInfo: { status: 'Accepted' } }),
        StartTransaction: () => ({ transactionId: 4242, idTagInfo: { status: 'Accepted' } }),
        StopTransaction: () => ({ idTagInfo: { status: 'Accepted' } }),
        MeterValues: () => ({}),
        StatusNotification: () => ({}),
    },
    'ocpp2.0.1': {
        BootNotification: () => ({ status: 'Accepted', currentTime: NOW, interval: 300 }),
        Heartbeat: () => ({ currentTime: NOW }),
        Authorize: () => ({ idTokenInfo: { status: 'Accepted' } }),
        TransactionEvent: ({ params }) => (params.idToken
            ? { idTokenInfo: { status: 'Accepted' } } : {}),
        MeterValues: () => ({}),
        StatusNotification: () => ({}),
    },
};

// After a charger's boot was answered, the CSMS makes the calls options.callsAfterBoot
// names for its version ({"ocpp1.6": [[method, params], ...]}), one after the other.
let callsAfterBoot = {};

async function callCharger(client) {
    for (const [method, params] of callsAfterBoot[client.protocol] ?? []) {
        try {
            const result = await client.call(method, params);
            report({ event: 'csms_call', identity: client.identity, method, ok: true, result });
        } catch (error) {
            report({ event: 'csms_call', identity: client.identity, method, ok: false,
                     error: errorFact(error) });
        }
    }
}

async function csms(options) {
    callsAfterBoot = options.callsAfterBoot ?? {};
    const server = new RPCServer({ protocols: options.protocols ?? ['ocpp1.6', 'ocpp2.0.1'],
                                   strictMode: true });
    server.auth((accept, reject, handshake) => {
        const password = handshake.password?.toString('utf8');
        report({ event: 'handshake', identity: handshake.identity, password: password ?? null });
        if (options.password != null && password !== options.password) {
            reject(401, 'wrong password');
            return;
        }
        accept();
    });
    server.on('client', (client) => {
        report({ event: 'client', identity: client.identity, protocol: client.protocol });
        watch(client, client.identity);
        client.handle(({ method, params }) => {
            const answer = ANSWERS[client.protocol]?.[method];
            if (!answer) throw createRPCError('NotImplemented', `${method} is not handled`);
            if (method === 'BootNotification') setImmediate(() => callCharger(client));
            return answer({ params });
        });
        client.on('close', ({ code, reason }) => report({
            event: 'client_closed', identity: client.identity, code, reason: String(reason) }));
    });
    const http = await server.listen(options.port ?? 0, '127.0.0.1');
    report({ event: 'listening', port: http.address().port });
    // Stop when the test closes stdin (or sends SIGTERM): no orphan if the test dies.
    await new Promise((resolve) => {
        process.stdin.on('end', resolve);
        process.stdin.resume();
        process.on('SIGTERM', resolve);
    });
    await server.close({ code: 1001, reason: 'csms stopping', force: true });
    return 0;
}

async function main() {
    const role = process.argv[2];
    if (role === 'charge-point') {
        return await chargePoint(JSON.parse(await readStdin()));
    }
    if (role === 'csms') {
        const firstLine = await new Promise((resolve) => {
            let buffered = '';
            const onData = (chunk) => {
                buffered += chunk;
                const end = buffered.indexOf('\n');
                if (end >= 0) {
                    process.stdin.off('data', onData);
                    process.stdin.pause();
                    resolve(buffered.slice(0, end));
                }
            };
            process.stdin.setEncoding('utf8');
            process.stdin.on('data', onData);
        });
        return await csms(JSON.parse(firstLine));
    }
    process.stderr.write('usage: node ocpp_rpc_peer.js charge-point|csms < json\n');
    return 2;
}

main().then((code) => { process.exitCode = code; }, (error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exitCode = 1;
});
