#!/usr/bin/env node
// A second independent OCPP 1.6J charge point, built on the npm package `ocpp-ts`, for a
// smoke test (tests/interop/test_second_implementation.py). ocpp-ts validates what it
// receives as a callee but not the answers to its own calls, so each answer is checked
// here against the response schemas ocpp-ts ships (its own copy of the official 1.6
// schemas, with its own ajv).
//
//   node ocpp_ts_charge_point.js < plan.json    plan: {url, identity, password?, steps}
//
// Reports JSON lines: {event: connected}, one {step, call, ok, result|error,
// schemaErrors} per step, {event: closed}.
'use strict';

const path = require('path');
const { OcppClient } = require('ocpp-ts');
const { readStdin, report, resolveRefs } = require('./plan_refs');

const OCPP_TS = path.dirname(require.resolve('ocpp-ts/package.json'));
const Ajv = require(require.resolve('ajv', { paths: [OCPP_TS] }));
const ajv = new Ajv({ allErrors: true });

function responseSchemaErrors(action, result) {
    const schema = { ...require(path.join(OCPP_TS, 'dist/src/ocpp-1.6-schemas',
                                          `${action}Response.json`)) };
    delete schema.$schema; // draft-04 marker; ocpp-ts itself drops it the same way
    const validate = ajv.compile(schema);
    return validate(result) ? [] : validate.errors.map((e) => `${e.dataPath} ${e.message}`);
}

async function main() {
    const plan = JSON.parse(await readStdin());
    const client = new OcppClient(encodeURIComponent(plan.identity));
    const headers = plan.password == null ? {} : { Authorization: 'Basic ' + Buffer.from(
        `${plan.identity}:${plan.password}`).toString('base64') };
    const connected = new Promise((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
        client.once('close', (code) => reject(new Error(`closed ${code}`)));
    });
    client.connect(plan.url.replace(/\/?$/, '/'), headers);
    try {
        await connected;
    } catch (error) {
        report({ event: 'connect_failed', error: String(error.message ?? error) });
        return 3;
    }
    report({ event: 'connected' });
    const results = [];
    for (const [index, step] of plan.steps.entries()) {
        try {
            const result = await client.callRequest(step.call, resolveRefs(step.params, results));
            results[index] = result;
            report({ step: index, call: step.call, ok: true, result,
                     schemaErrors: responseSchemaErrors(step.call, result) });
        } catch (error) {
            report({ step: index, call: step.call, ok: false,
                     error: { code: error.code ?? null, message: String(error.message) } });
        }
    }
    // ocpp-ts has no close(): close its socket, as a charger going away cleanly would
    const closed = new Promise((resolve) => client.once('close', resolve));
    client.connection.socket.close(1000, 'plan done');
    report({ event: 'closed', code: await closed });
    return 0;
}

// ocpp-ts leaves a 10 s timer behind each call: exit once the plan is done
main().then((code) => process.exit(code), (error) => {
    process.stderr.write(`${error.stack ?? error}\n`);
    process.exit(1);
});
