// Drives GovESB's Node client (govesb-connector-js), unmodified, as its README says:
// configured with keys, client id and secret, token URL and engine URL, then pushData
// (requestData with "apiCode", requestNida with "apiCode" and "nidaUserId"; or, with
// "replies" in the configuration, only verifyThenReturnData on each of them).
// Reads that configuration as JSON on stdin; prints {"verified": <the data text its own
// verifyThenReturnData accepted, or null>} (a list of them for "replies").
"use strict";

const { GovEsbHelper } = require("govesb-connector-js");

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const config = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const helper = new GovEsbHelper({
    clientPrivateKey: config.clientPrivateKey,
    esbPublicKey: config.esbPublicKey,
    clientId: config.clientId,
    clientSecret: config.clientSecret,
    esbTokenUrl: config.esbTokenUrl,
    esbEngineUrl: config.esbEngineUrl,
    nidaUserId: config.nidaUserId,
  });
  const body = JSON.stringify(config.esbBody);
  let verified;
  if (config.replies) {
    verified = config.replies.map((reply) => helper.verifyThenReturnData(reply, "json"));
  } else if (config.apiCode && config.nidaUserId) {
    verified = await helper.requestNida(config.apiCode, body, "json");
  } else if (config.apiCode) {
    verified = await helper.requestData(config.apiCode, body, "json");
  } else {
    verified = await helper.pushData(config.pushCode, body, "json");
  }
  process.stdout.write(JSON.stringify({ verified }));
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error));
  process.exit(2);
});
